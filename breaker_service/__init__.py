"""agent-fleet's fleet-wide circuit breaker: one shared decision per provider and model.

Typical use in a worker process::

    from breaker_service import FleetBreaker, Scope
    breaker = FleetBreaker.from_settings(settings, make_redis(settings), registry_policy_for)
    with breaker.protect([Scope("sambanova"), Scope("sambanova", "llama-70b")]):
        call_the_provider()

See :mod:`breaker_service.breaker` for round trips, events and the Redis-unavailable
fallback, :mod:`breaker_service.control` for operator actions, and
:mod:`breaker_service.store.base` for the state machine.
"""

from breaker_service.breaker import FleetBreaker, Permit, Rejection
from breaker_service.control import BreakerControl
from breaker_service.errors import BreakerError, BreakerOpen, PolicyError, StoreUnavailable
from breaker_service.events import BreakerEvent, EventLog
from breaker_service.guard import StoreGuard
from breaker_service.listeners import BreakerListener, LoggingListener
from breaker_service.outcomes import Outcome, OutcomeClass, classify
from breaker_service.policy import BreakerPolicy
from breaker_service.scope import Scope
from breaker_service.store.base import (
    AcquireResult,
    BreakerStore,
    ScopeGrant,
    ScopeSnapshot,
    Transition,
)
from breaker_service.store.memory import MemoryStore
from breaker_service.store.redis import RedisStore

__all__ = [
    "AcquireResult",
    "BreakerControl",
    "BreakerError",
    "BreakerEvent",
    "BreakerListener",
    "BreakerOpen",
    "BreakerPolicy",
    "BreakerStore",
    "EventLog",
    "FleetBreaker",
    "LoggingListener",
    "MemoryStore",
    "Outcome",
    "OutcomeClass",
    "Permit",
    "PolicyError",
    "RedisStore",
    "Rejection",
    "Scope",
    "ScopeGrant",
    "ScopeSnapshot",
    "StoreGuard",
    "StoreUnavailable",
    "Transition",
    "classify",
]
