"""The breaker store contract: where breaker state lives and how it moves.

A store keeps, per :class:`~breaker_service.scope.Scope`, the state machine of one breaker
(closed, open, half_open, and the operator's forced_open, forced_closed, disabled), a
time-bucketed sliding window of outcomes, the trip count for backoff, and the half-open probe
leases. Every method is ONE atomic step (one Lua call on Redis, one lock in memory), and every
transition is returned to exactly the one caller whose call caused it.

Implementations: :class:`~breaker_service.store.memory.MemoryStore` (in process, injected
clock) and :class:`~breaker_service.store.redis.RedisStore` (Redis hashes, Lua scripts, Redis
server time). Both pass ``tests/test_store_contract.py``.

Semantic decisions common to both stores:

- **Trips and backoff**: ``trips`` counts trips since the last close. The open period after a
  trip is ``max(retry_after_ms, min(open_cap_ms, open_base_ms * backoff_factor**trips) *
  (1 + jitter_ratio * jitter))`` with ``trips`` counted before this trip, so the first trip
  opens for ``open_base_ms`` and each failed probe doubles it (factor 2). Closing after
  ``half_open_successes`` good probes resets ``trips`` to 0 (decay on close); ``reset`` too.
- **Window on transitions**: a trip or a close starts a fresh window (the outcomes that
  caused the trip are not counted again after the next close).
- **half_open**: only grants that carry a probe token are probes; a probe success frees its
  lease and counts toward ``half_open_successes``; any failure of the current generation
  (probe or not) reopens. Non-probe successes never close.
- **IGNORED** outcomes change nothing (not the window, not the consecutive counter, not the
  state); an IGNORED probe frees its lease.
- **Generations**: every transition increments the scope's generation. An outcome whose
  grant carries an older generation updates the window only.
- **429**: a RATE_LIMITED outcome counts as a failure and trips through the rule it fires
  (``consecutive``, ``failure_rate``; ``probe_failed`` in half_open), so the Transition names
  that rule and its numbers; its Retry-After shows as ``open_until_ms``. The stores never emit
  the ``rate_limited`` trigger (kept in :data:`Trigger` for listeners that want to tag it).
- **Probe leases** expire after ``probe_lease_ms``; at most ``half_open_max_probes`` live
  leases exist per scope (expired ones are reclaimed on the next acquire). A probe success
  from an expired lease still counts if the generation is current.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from breaker_service.outcomes import Outcome
from breaker_service.policy import BreakerPolicy
from breaker_service.scope import Scope

State = Literal["closed", "open", "half_open", "forced_open", "forced_closed", "disabled"]
"""States of one breaker scope. The forced states and ``disabled`` only change by control."""

Trigger = Literal[
    "failure_rate",
    "slow_calls",
    "consecutive",
    "credential",
    "rate_limited",
    "probe_failed",
    "probes_succeeded",
    "open_elapsed",
    "manual",
]
"""Why a transition happened."""

ControlAction = Literal["force_open", "force_closed", "disable", "reset"]
"""Operator actions accepted by :meth:`BreakerStore.control`."""

RejectReason = Literal["open", "half_open_full", "forced_open", "credential"]
"""Why :meth:`BreakerStore.acquire` rejected a call."""

FORCED_OPEN_RETRY_AFTER_MS = 60_000
"""``retry_after_ms`` reported for a forced_open or credential-open scope (no end known)."""


def clamp_jitter(jitter: float) -> float:
    """``jitter`` forced into ``[0, 1]`` (NaN and infinities become 0): a bad draw never
    produces a negative, endless or NaN open period."""
    value = float(jitter)
    return min(max(value, 0.0), 1.0) if math.isfinite(value) else 0.0


@dataclass(frozen=True)
class ScopeGrant:
    """Permission to call, for one scope: give it back to :meth:`BreakerStore.record`.

    ``probe_token`` is set only when the scope is half_open and this call holds a probe lease.
    """

    scope: Scope
    generation: int
    probe_token: str | None = None


@dataclass(frozen=True)
class AcquireResult:
    """The answer of :meth:`BreakerStore.acquire`.

    When ``allowed``, ``grants`` has one grant per requested scope, in order. When not,
    ``grants`` is empty, ``rejected_scope`` names the first scope that said no, ``reason`` why
    (``open``, ``half_open_full``, ``forced_open``, ``credential``) and ``retry_after_ms`` when
    to come back.
    """

    allowed: bool
    grants: tuple[ScopeGrant, ...]
    rejected_scope: Scope | None = None
    reason: str | None = None
    retry_after_ms: int = 0


@dataclass(frozen=True)
class Transition:
    """One state change of one scope, reported once, to the caller that caused it.

    ``threshold`` and ``value`` are the trip rule's limit and the measured value (for
    ``failure_rate`` e.g. 0.5 and 0.8; for ``consecutive`` 5 and 5; for ``rate_limited`` and
    ``credential`` 1 and 1; for ``open_elapsed`` the open period in ms and the ms elapsed).
    ``generation`` is the scope's generation after the change; times are store times (Redis
    ``TIME`` for RedisStore).
    """

    scope: Scope
    from_state: State
    to_state: State
    trigger: Trigger
    threshold: float
    value: float
    generation: int
    open_until_ms: int | None
    at_ms: int


@dataclass(frozen=True)
class ScopeSnapshot:
    """A read-only view of one scope (for the CLI and operators); window values are live."""

    scope: Scope
    state: State
    generation: int
    open_until_ms: int | None
    trips: int
    calls: int
    failures: int
    slow_calls: int
    failure_rate: float
    slow_rate: float
    consecutive_failures: int
    probes_in_flight: int
    probe_successes: int
    now_ms: int


class BreakerStore(ABC):
    """Where breaker state lives. Each method is one atomic step; see the module docstring."""

    @abstractmethod
    def acquire(
        self, scopes: Sequence[tuple[Scope, BreakerPolicy]]
    ) -> tuple[AcquireResult, list[Transition]]:
        """Ask every scope for permission to call, all in one atomic step.

        If any scope rejects, nothing is taken on the others (no probe lease). An open scope
        whose open period has elapsed moves to half_open here; that Transition (trigger
        ``open_elapsed``) is returned to exactly this caller.
        """

    @abstractmethod
    def record(
        self,
        grants: Sequence[tuple[ScopeGrant, BreakerPolicy]],
        outcome: Outcome,
        *,
        jitter: float,
    ) -> list[Transition]:
        """Count ``outcome`` against every granted scope, in one atomic step.

        ``jitter`` in ``[0, 1)`` is drawn by the caller; it stretches the open period by up to
        ``jitter_ratio``. A grant from an older generation updates the window only.
        """

    @abstractmethod
    def control(self, scope: Scope, policy: BreakerPolicy, action: ControlAction) -> Transition:
        """Apply an operator action; returns the (trigger ``manual``) Transition.

        ``force_open`` rejects until changed; ``force_closed`` allows and never trips;
        ``disable`` allows and records metrics only; ``reset`` closes with a fresh window and
        ``trips`` = 0.
        """

    @abstractmethod
    def snapshot(self, scope: Scope, policy: BreakerPolicy) -> ScopeSnapshot:
        """The scope's current state and window totals (closed and empty when unknown)."""

    @abstractmethod
    def scopes(self) -> list[Scope]:
        """Every scope that has state in this store, sorted."""

    @abstractmethod
    def ping(self) -> None:
        """Return when the store answers; raise StoreUnavailable when it does not."""
