"""Breaker stores: the contract and its in-memory and Redis implementations.

``RedisStore`` is imported lazily (``from breaker_service.store.redis import RedisStore``) by
callers that have Redis; the contract and ``MemoryStore`` need nothing beyond the standard
library.
"""

from breaker_service.store.base import (
    FORCED_OPEN_RETRY_AFTER_MS,
    AcquireResult,
    BreakerStore,
    ControlAction,
    RejectReason,
    ScopeGrant,
    ScopeSnapshot,
    State,
    Transition,
    Trigger,
)
from breaker_service.store.memory import MemoryStore

__all__ = [
    "FORCED_OPEN_RETRY_AFTER_MS",
    "AcquireResult",
    "BreakerStore",
    "ControlAction",
    "MemoryStore",
    "RejectReason",
    "ScopeGrant",
    "ScopeSnapshot",
    "State",
    "Transition",
    "Trigger",
]
