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
- **Aggregated successes**: ``record(..., count=n, slow=(k1, k2...))`` counts ``n``
  SUCCESS calls of one grant set at once (``slow[i]`` of them slow for scope ``i``). It
  equals ``n`` single records applied in this order: the fast calls, then the slow ones. So
  the window gains ``n`` calls and ``slow[i]`` slow calls, the consecutive counter resets, a
  slow-call trip fires at exactly the call that n singles would trip on (the calls after it
  count in the fresh window), and in half_open nothing closes (aggregates carry no probe
  token). Only non-probe SUCCESS may be aggregated (``count > 1``); anything else raises
  PolicyError. :meth:`BreakerStore.record_many` sends several records in one round trip, in
  order.
- **Probe leases** expire after ``probe_lease_ms``; at most ``half_open_max_probes`` live
  leases exist per scope (expired ones are reclaimed on the next acquire). A probe success
  from an expired lease still counts if the generation is current.
- **Suspect cap** (``policy.suspect_cap``, default on): a closed scope whose
  consecutive-failure counter ``cf`` is >= 1 is *suspect*. While suspect, acquire admits a
  call only while the scope's live *suspect leases* are fewer than
  ``max(1, consecutive_failures - cf)`` (the failures still needed to trip); each admitted call
  takes one (``ScopeGrant.lease_token``, expiry ``now + probe_lease_ms``). Otherwise it rejects
  with reason ``suspect_full`` and ``retry_after_ms = clamp(earliest lease expiry - now, 1,
  250)``. A record carrying the token frees that lease (any outcome, IGNORED too, any
  generation); a SUCCESS that resets ``cf`` (see stale successes below) and every
  transition drop all suspect leases; expired leases are reclaimed on access. So a dying
  provider receives at most the calls already in flight when the first failure landed plus
  the failures still needed to trip, instead of everything the fleet sends until the trip.
  Calls admitted while ``cf`` is 0 hold no lease and are never limited.
  ``suspect_cap=False`` turns the cap off.
- **Stale successes**: each scope counts its failures in ``fs`` (the failure sequence number:
  +1 whenever a failure raises the consecutive counter ``cf``; it never goes down while the
  scope's state exists), and every grant carries ``fs`` as of its admission
  (``ScopeGrant.fail_seq``). A SUCCESS whose ``fail_seq`` is lower than the scope's ``fs`` was
  admitted before a failure that is already counted: it still counts in the window (calls,
  slow calls, slow-call trips) and frees its own suspect lease, but it does not reset ``cf``
  and does not drop the other suspect leases. Successes that arrive late (coalesced, from
  other processes) therefore cannot delay a consecutive trip or reopen a suspect scope.
  A SUCCESS with ``fail_seq >= fs`` resets ``cf`` as before. Probes are unchanged.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

from breaker_service.errors import PolicyError
from breaker_service.outcomes import Outcome, OutcomeClass
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

CONTROL_TARGET: dict[ControlAction, State] = {
    "force_open": "forced_open",
    "force_closed": "forced_closed",
    "disable": "disabled",
    "reset": "closed",
}
"""The state each control action puts a scope in (control.lua holds the same table)."""

CONTROL_ACTIONS: tuple[ControlAction, ...] = get_args(ControlAction)


def check_control_action(action: str) -> None:
    """Raise PolicyError unless ``action`` is one of :data:`CONTROL_ACTIONS`."""
    if action not in CONTROL_ACTIONS:
        raise PolicyError(
            f"control action {action!r} is unknown: use one of {', '.join(CONTROL_ACTIONS)}"
        )


RejectReason = Literal["open", "half_open_full", "forced_open", "credential", "suspect_full"]
"""Why :meth:`BreakerStore.acquire` rejected a call."""

FORCED_OPEN_RETRY_AFTER_MS = 60_000
"""``retry_after_ms`` reported for a forced_open or credential-open scope (no end known)."""

SUSPECT_RETRY_CAP_MS = 250
"""Longest ``retry_after_ms`` of a ``suspect_full`` rejection (a lease usually ends sooner)."""


def suspect_slots(policy: BreakerPolicy, consecutive: int) -> int:
    """Suspect leases a closed scope with ``consecutive`` (>= 1) failures in a row may hold at
    once: the failures still needed to trip, at least 1."""
    return max(1, policy.consecutive_failures - consecutive)


def clamp_jitter(jitter: float) -> float:
    """``jitter`` forced into ``[0, 1]`` (NaN and infinities become 0): a bad draw never
    produces a negative, endless or NaN open period."""
    value = float(jitter)
    return min(max(value, 0.0), 1.0) if math.isfinite(value) else 0.0


def check_aggregate(
    grants: Sequence[tuple[ScopeGrant, BreakerPolicy]],
    outcome: Outcome,
    count: int,
    slow: Sequence[int] | None,
) -> None:
    """Raise PolicyError unless ``count``/``slow`` describe a valid record (see module doc)."""
    if not isinstance(count, int) or count < 1:
        raise PolicyError(f"record count={count!r} is invalid: use an int >= 1 (1 = one call)")
    if slow is not None:
        if len(slow) != len(grants):
            raise PolicyError(
                f"record slow={tuple(slow)!r} is invalid: give one slow-call count per grant "
                f"({len(grants)}), or None to judge the outcome's latency"
            )
        if any(not isinstance(k, int) or not 0 <= k <= count for k in slow):
            raise PolicyError(
                f"record slow={tuple(slow)!r} is invalid: each count must be an int in "
                f"[0, count={count}]"
            )
    if count > 1 and (
        outcome.cls is not OutcomeClass.SUCCESS or any(g.probe_token is not None for g, _ in grants)
    ):
        raise PolicyError(
            f"record count={count} is only valid for non-probe SUCCESS outcomes (got "
            f"{outcome.cls}): record failures and probe outcomes one at a time"
        )


def aggregate_trip_point(
    *, calls: int, slow_calls: int, policy: BreakerPolicy, fast: int, slow: int
) -> tuple[int, int] | None:
    """Where ``fast`` then ``slow`` single successes would trip a closed scope on slow calls.

    ``calls``/``slow_calls`` are the live window totals before them. Returns ``(f, s)``: the
    trip happens right after ``f`` fast and ``s`` slow successes were counted; None: no trip.
    Fast calls only lower the slow rate, so among them only the one that brings the window
    to ``minimum_calls`` can trip; slow calls only raise it, so the first that satisfies the
    rule trips.
    """
    m, rate = policy.minimum_calls, policy.slow_call_rate_threshold
    j = max(1, m - calls)
    if j <= fast and slow_calls > 0 and slow_calls / (calls + j) >= rate:
        return j, 0
    base = calls + fast
    for k in range(1, slow + 1):
        if base + k >= m and (slow_calls + k) / (base + k) >= rate:
            return fast, k
    return None


@dataclass(frozen=True)
class ScopeGrant:
    """Permission to call, for one scope: give it back to :meth:`BreakerStore.record`.

    ``probe_token`` is set only when the scope is half_open and this call holds a probe lease.
    ``lease_token`` is set only when the scope was closed but suspect (see the module
    docstring) and this call holds a suspect lease: record it promptly, it blocks admissions.
    ``fail_seq`` is the scope's failure sequence number ``fs`` at admission: a SUCCESS recorded
    with an older one does not reset the consecutive counter (module docstring, stale successes).
    """

    scope: Scope
    generation: int
    probe_token: str | None = None
    lease_token: str | None = None
    fail_seq: int = 0


@dataclass(frozen=True)
class AcquireResult:
    """The answer of :meth:`BreakerStore.acquire`.

    When ``allowed``, ``grants`` has one grant per requested scope, in order. When not,
    ``grants`` is empty, ``rejected_scope`` names the first scope that said no, ``reason`` why
    (``open``, ``half_open_full``, ``forced_open``, ``credential``, ``suspect_full``) and
    ``retry_after_ms`` when to come back.
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
class RecordItem:
    """One record for :meth:`BreakerStore.record_many`: the arguments of one ``record`` call.

    ``count``/``slow`` aggregate successes (see the module docstring); ``slow`` None judges
    ``outcome.latency_ms`` against each scope's ``slow_call_ms``.
    """

    grants: tuple[tuple[ScopeGrant, BreakerPolicy], ...]
    outcome: Outcome
    count: int = 1
    slow: tuple[int, ...] | None = None


@dataclass(frozen=True)
class ScopeSnapshot:
    """A read-only view of one scope (for the CLI and operators); window values are live.

    ``suspect_in_flight`` counts the live suspect leases, ``fail_seq`` is the failure sequence
    number ``fs`` (see the module docstring)."""

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
    suspect_in_flight: int = 0
    fail_seq: int = 0


class BreakerStore(ABC):
    """Where breaker state lives. Each method is one atomic step; see the module docstring."""

    @abstractmethod
    def acquire(
        self, scopes: Sequence[tuple[Scope, BreakerPolicy]]
    ) -> tuple[AcquireResult, list[Transition]]:
        """Ask every scope for permission to call, all in one atomic step.

        If any scope rejects, nothing is taken on the others (no probe or suspect lease). An
        open scope whose open period has elapsed moves to half_open here; that Transition (trigger
        ``open_elapsed``) is returned to exactly this caller.
        """

    @abstractmethod
    def record(
        self,
        grants: Sequence[tuple[ScopeGrant, BreakerPolicy]],
        outcome: Outcome,
        *,
        jitter: float,
        count: int = 1,
        slow: Sequence[int] | None = None,
    ) -> list[Transition]:
        """Count ``outcome`` against every granted scope, in one atomic step.

        ``jitter`` in ``[0, 1)`` is drawn by the caller; it stretches the open period by up to
        ``jitter_ratio``. A grant from an older generation updates the window only.
        ``count > 1`` records that many non-probe successes at once (``slow``: how many were
        slow, per grant); it equals as many single records (module docstring).
        """

    def record_many(self, items: Sequence[RecordItem], *, jitter: float) -> list[Transition]:
        """Apply ``items`` in order (each atomic); the stores send them in one round trip.

        This default calls :meth:`record` per item; RedisStore pipelines them.
        """
        out: list[Transition] = []
        for item in items:
            out += self.record(
                item.grants, item.outcome, jitter=jitter, count=item.count, slow=item.slow
            )
        return out

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
