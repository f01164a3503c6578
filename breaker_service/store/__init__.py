"""Breaker stores: the contract (:mod:`.base`) and its in-memory and Redis implementations."""

from breaker_service.store.base import (
    FORCED_OPEN_RETRY_AFTER_MS,
    AcquireResult,
    BreakerStore,
    ControlAction,
    RecordItem,
    RejectReason,
    ScopeGrant,
    ScopeSnapshot,
    State,
    Transition,
    Trigger,
)
from breaker_service.store.memory import MemoryStore
from breaker_service.store.redis import RedisStore

__all__ = [
    "FORCED_OPEN_RETRY_AFTER_MS",
    "AcquireResult",
    "BreakerStore",
    "ControlAction",
    "MemoryStore",
    "RecordItem",
    "RedisStore",
    "RejectReason",
    "ScopeGrant",
    "ScopeSnapshot",
    "State",
    "Transition",
    "Trigger",
]
