"""MemoryStore: the breaker store in one process, with an injected clock.

It implements exactly the semantics of :class:`~breaker_service.store.redis.RedisStore` (see
:mod:`breaker_service.store.base`), under one lock. It serves tests (advance a fake clock
instead of sleeping) and is FleetBreaker's ``local`` fallback while Redis is unreachable.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from breaker_service.outcomes import Outcome, OutcomeClass
from breaker_service.policy import BreakerPolicy
from breaker_service.scope import Scope
from breaker_service.store._window import SlidingWindow
from breaker_service.store.base import (
    CONTROL_TARGET,
    FORCED_OPEN_RETRY_AFTER_MS,
    SUSPECT_RETRY_CAP_MS,
    AcquireResult,
    BreakerStore,
    ControlAction,
    ScopeGrant,
    ScopeSnapshot,
    State,
    Transition,
    Trigger,
    aggregate_trip_point,
    check_aggregate,
    check_control_action,
    clamp_jitter,
    suspect_slots,
)


def _monotonic_ms() -> int:
    return time.monotonic_ns() // 1_000_000


@dataclass(slots=True)
class _Scope:
    """Mutable state of one scope (guarded by the store's lock)."""

    window: SlidingWindow
    state: State = "closed"
    generation: int = 0
    open_until_ms: int | None = None
    opened_at_ms: int = 0
    open_period_ms: int = 0
    trips: int = 0
    consecutive: int = 0
    fail_seq: int = 0  # fs: +1 per failure that raised `consecutive`; never goes down
    probe_successes: int = 0
    leases: dict[str, int] = field(default_factory=dict)
    suspect: dict[str, int] = field(default_factory=dict)  # suspect leases: token -> expiry

    def reclaim(self, now_ms: int) -> None:
        """Forget probe and suspect leases that expired (their holder died or hung)."""
        if self.leases:
            self.leases = {tok: exp for tok, exp in self.leases.items() if exp > now_ms}
        if self.suspect:
            self.suspect = {tok: exp for tok, exp in self.suspect.items() if exp > now_ms}


@dataclass(frozen=True, slots=True)
class _Decision:
    allowed: bool
    reason: str | None = None
    retry_after_ms: int = 0
    elapsed: bool = False  # open period over: move to half_open on the way
    probe: bool = False  # take a probe lease
    suspect: bool = False  # take a suspect lease


class MemoryStore(BreakerStore):
    """Breaker state in this process. Thread-safe (one lock); time from ``clock_ms``.

    ``clock_ms`` returns milliseconds from any origin (default: the monotonic clock); the store
    never lets time go backwards.
    """

    def __init__(self, *, clock_ms: Callable[[], int] = _monotonic_ms) -> None:
        self._clock_ms = clock_ms
        self._lock = threading.Lock()
        self._scopes: dict[Scope, _Scope] = {}
        self._last_now = -(2**62)
        self._tokens = itertools.count(1)

    # -- helpers (call with the lock held) ------------------------------------------------

    def _now(self) -> int:
        self._last_now = max(self._last_now, int(self._clock_ms()))
        return self._last_now

    def _get(self, scope: Scope, policy: BreakerPolicy, now: int) -> _Scope:
        st = self._scopes.get(scope)
        if st is None:
            st = _Scope(SlidingWindow(policy.bucket_ms, policy.buckets, now))
            self._scopes[scope] = st
        elif not st.window.fits(policy.bucket_ms, policy.buckets):
            st.window = SlidingWindow(policy.bucket_ms, policy.buckets, now)
        return st

    @staticmethod
    def _decide(st: _Scope | None, policy: BreakerPolicy, now: int) -> _Decision:
        if st is not None and st.state == "closed" and st.consecutive and policy.suspect_cap:
            return MemoryStore._decide_suspect(st, policy, now)
        if st is None or st.state in ("closed", "forced_closed", "disabled"):
            return _Decision(True)
        if st.state == "forced_open":
            return _Decision(False, "forced_open", FORCED_OPEN_RETRY_AFTER_MS)
        if st.state == "open":
            return MemoryStore._decide_open(st, now)
        live = [exp for exp in st.leases.values() if exp > now]
        if len(live) >= policy.half_open_max_probes:
            return _Decision(False, "half_open_full", max(1, min(live) - now))
        return _Decision(True, probe=True)

    @staticmethod
    def _decide_suspect(st: _Scope, policy: BreakerPolicy, now: int) -> _Decision:
        live = [exp for exp in st.suspect.values() if exp > now]
        if len(live) >= suspect_slots(policy, st.consecutive):
            retry = min(min(live) - now, SUSPECT_RETRY_CAP_MS)
            return _Decision(False, "suspect_full", max(1, retry))
        return _Decision(True, suspect=True)

    @staticmethod
    def _decide_open(st: _Scope, now: int) -> _Decision:
        if st.open_until_ms is None:
            return _Decision(False, "credential", FORCED_OPEN_RETRY_AFTER_MS)
        if now < st.open_until_ms:
            return _Decision(False, "open", st.open_until_ms - now)
        return _Decision(True, elapsed=True, probe=True)

    @staticmethod
    def _move(
        scope: Scope, st: _Scope, to: State, rule: tuple[Trigger, float, float], now: int
    ) -> Transition:
        trigger, threshold, value = rule
        frm = st.state
        st.state = to
        st.generation += 1
        st.leases = {}
        st.suspect = {}
        st.probe_successes = 0
        if to != "open":
            st.open_until_ms = None
        return Transition(
            scope, frm, to, trigger, threshold, value, st.generation, st.open_until_ms, now
        )

    def _trip(
        self,
        *,
        scope: Scope,
        st: _Scope,
        policy: BreakerPolicy,
        outcome: Outcome,
        rule: tuple[Trigger, float, float],
        jitter: float,
        now: int,
    ) -> Transition:
        if rule[0] == "credential":
            st.open_until_ms = None
            st.open_period_ms = 0
        else:
            period = int(policy.open_ms_for(st.trips) * (1.0 + policy.jitter_ratio * jitter))
            if outcome.cls == OutcomeClass.RATE_LIMITED and outcome.retry_after_ms:
                period = max(period, int(outcome.retry_after_ms))
            st.open_period_ms = period
            st.open_until_ms = now + period
        st.trips += 1
        st.opened_at_ms = now
        st.consecutive = 0
        st.window.clear(now)
        return self._move(scope, st, "open", rule, now)

    @staticmethod
    def _closed_rule(
        st: _Scope, policy: BreakerPolicy, outcome: Outcome, failed: bool
    ) -> tuple[Trigger, float, float] | None:
        if outcome.cls == OutcomeClass.CREDENTIAL:
            return ("credential", 1.0, 1.0)
        w = st.window
        if failed and st.consecutive >= policy.consecutive_failures:
            return ("consecutive", float(policy.consecutive_failures), float(st.consecutive))
        if w.calls >= policy.minimum_calls:
            rate = w.failures / w.calls
            if failed and rate >= policy.failure_rate_threshold:
                return ("failure_rate", policy.failure_rate_threshold, rate)
            slow_rate = w.slow / w.calls
            if w.slow and slow_rate >= policy.slow_call_rate_threshold:
                return ("slow_calls", policy.slow_call_rate_threshold, slow_rate)
        return None

    def _record_one(
        self,
        grant: ScopeGrant,
        policy: BreakerPolicy,
        outcome: Outcome,
        jitter: float,
        now: int,
        *,
        count: int = 1,
        slow: int | None = None,
    ) -> Transition | None:
        st = self._get(grant.scope, policy, now)
        if grant.probe_token is not None:
            st.leases.pop(grant.probe_token, None)
        if grant.lease_token is not None:
            st.suspect.pop(grant.lease_token, None)
        if outcome.cls == OutcomeClass.IGNORED:
            return None
        # a success admitted before the latest counted failure is stale: it keeps cf and leases
        fresh = outcome.cls is OutcomeClass.SUCCESS and grant.fail_seq >= st.fail_seq
        if fresh:
            st.suspect = {}  # the consecutive counter resets: the scope is no longer suspect
        if count > 1:
            return self._record_successes(
                grant, st, policy=policy, count=count, slow=slow, outcome=outcome, jitter=jitter,
                now=now, fresh=fresh,
            )  # fmt: skip
        failed = outcome.cls.counts_as_failure
        is_slow = outcome.latency_ms > policy.slow_call_ms if slow is None else slow > 0
        st.window.add(now, failed=failed, slow=is_slow)
        if failed:
            st.consecutive += 1
            st.fail_seq += 1
        elif fresh:
            st.consecutive = 0
        if grant.generation != st.generation:
            return None
        rule: tuple[Trigger, float, float] | None = None
        if st.state == "closed":
            rule = self._closed_rule(st, policy, outcome, failed)
        elif st.state == "half_open":
            if not failed:
                return self._probe_success(grant, st, policy, now)
            credential = outcome.cls == OutcomeClass.CREDENTIAL
            rule = ("credential", 1.0, 1.0) if credential else ("probe_failed", 1.0, 1.0)
        if rule is None:
            return None
        return self._trip(
            scope=grant.scope,
            st=st,
            policy=policy,
            outcome=outcome,
            rule=rule,
            jitter=jitter,
            now=now,
        )

    def _record_successes(
        self,
        grant: ScopeGrant,
        st: _Scope,
        *,
        policy: BreakerPolicy,
        count: int,
        slow: int | None,
        outcome: Outcome,
        jitter: float,
        now: int,
        fresh: bool,
    ) -> Transition | None:
        """``count`` non-probe successes at once, exactly as many single records would do."""
        if slow is None:
            slow = count if outcome.latency_ms > policy.slow_call_ms else 0
        if fresh:
            st.consecutive = 0
        w = st.window
        w.advance(now)
        point = None
        if grant.generation == st.generation and st.state == "closed":
            point = aggregate_trip_point(
                calls=w.calls, slow_calls=w.slow, policy=policy, fast=count - slow, slow=slow
            )
        if point is None:
            w.add_successes(now, count, slow)
            return None
        fast_before, slow_before = point
        w.add_successes(now, fast_before + slow_before, slow_before)
        rule: tuple[Trigger, float, float] = (
            "slow_calls",
            policy.slow_call_rate_threshold,
            w.slow / w.calls,
        )
        tr = self._trip(
            scope=grant.scope, st=st, policy=policy, outcome=outcome, rule=rule, jitter=jitter,
            now=now,
        )  # fmt: skip
        st.window.add_successes(now, count - fast_before - slow_before, slow - slow_before)
        return tr

    def _probe_success(
        self, grant: ScopeGrant, st: _Scope, policy: BreakerPolicy, now: int
    ) -> Transition | None:
        if grant.probe_token is None:
            return None
        st.probe_successes += 1
        if st.probe_successes < policy.half_open_successes:
            return None
        rule: tuple[Trigger, float, float] = (
            "probes_succeeded",
            float(policy.half_open_successes),
            float(st.probe_successes),
        )
        st.trips = 0
        st.consecutive = 0
        st.window.clear(now)
        return self._move(grant.scope, st, "closed", rule, now)

    # -- BreakerStore ------------------------------------------------------------------------

    def acquire(
        self, scopes: Sequence[tuple[Scope, BreakerPolicy]]
    ) -> tuple[AcquireResult, list[Transition]]:
        """See :meth:`BreakerStore.acquire`."""
        with self._lock:
            now = self._now()
            decisions = []
            for scope, policy in scopes:
                d = self._decide(self._scopes.get(scope), policy, now)
                if not d.allowed:
                    return AcquireResult(False, (), scope, d.reason, d.retry_after_ms), []
                decisions.append(d)
            grants: list[ScopeGrant] = []
            transitions: list[Transition] = []
            for (scope, policy), d in zip(scopes, decisions, strict=True):
                if d.suspect:
                    st = self._scopes[scope]
                    st.reclaim(now)
                    token = f"{next(self._tokens)}"
                    st.suspect[token] = now + policy.probe_lease_ms
                    grants.append(ScopeGrant(scope, st.generation, None, token, st.fail_seq))
                    continue
                if not d.probe:
                    known = self._scopes.get(scope)
                    if known is None:
                        grants.append(ScopeGrant(scope, 0))
                    else:
                        grants.append(
                            ScopeGrant(scope, known.generation, None, None, known.fail_seq)
                        )
                    continue
                st = self._get(scope, policy, now)
                if d.elapsed:
                    elapsed = float(now - st.opened_at_ms)
                    transitions.append(
                        self._move(
                            scope,
                            st,
                            "half_open",
                            ("open_elapsed", float(st.open_period_ms), elapsed),
                            now,
                        )
                    )
                st.reclaim(now)
                token = f"{next(self._tokens)}"
                st.leases[token] = now + policy.probe_lease_ms
                grants.append(ScopeGrant(scope, st.generation, token, None, st.fail_seq))
            return AcquireResult(True, tuple(grants)), transitions

    def record(
        self,
        grants: Sequence[tuple[ScopeGrant, BreakerPolicy]],
        outcome: Outcome,
        *,
        jitter: float,
        count: int = 1,
        slow: Sequence[int] | None = None,
    ) -> list[Transition]:
        """See :meth:`BreakerStore.record`."""
        check_aggregate(grants, outcome, count, slow)
        jitter = clamp_jitter(jitter)
        with self._lock:
            now = self._now()
            out = []
            for i, (grant, policy) in enumerate(grants):
                k = None if slow is None else slow[i]
                tr = self._record_one(grant, policy, outcome, jitter, now, count=count, slow=k)
                if tr is not None:
                    out.append(tr)
            return out

    def control(self, scope: Scope, policy: BreakerPolicy, action: ControlAction) -> Transition:
        """See :meth:`BreakerStore.control`."""
        check_control_action(action)
        with self._lock:
            now = self._now()
            st = self._get(scope, policy, now)
            if action == "reset":
                st.trips = 0
                st.consecutive = 0
                st.window.clear(now)
            return self._move(scope, st, CONTROL_TARGET[action], ("manual", 0.0, 0.0), now)

    def snapshot(self, scope: Scope, policy: BreakerPolicy) -> ScopeSnapshot:
        """See :meth:`BreakerStore.snapshot`."""
        with self._lock:
            now = self._now()
            st = self._scopes.get(scope)
            if st is None:  # read-only: an unknown scope is not created
                st = _Scope(SlidingWindow(policy.bucket_ms, policy.buckets, now))
            w = st.window
            w.advance(now)
            return ScopeSnapshot(
                scope=scope,
                state=st.state,
                generation=st.generation,
                open_until_ms=st.open_until_ms,
                trips=st.trips,
                calls=w.calls,
                failures=w.failures,
                slow_calls=w.slow,
                failure_rate=w.failures / w.calls if w.calls else 0.0,
                slow_rate=w.slow / w.calls if w.calls else 0.0,
                consecutive_failures=st.consecutive,
                probes_in_flight=sum(1 for exp in st.leases.values() if exp > now),
                probe_successes=st.probe_successes,
                now_ms=now,
                suspect_in_flight=sum(1 for exp in st.suspect.values() if exp > now),
                fail_seq=st.fail_seq,
            )

    def scopes(self) -> list[Scope]:
        """See :meth:`BreakerStore.scopes`."""
        with self._lock:
            return sorted(self._scopes)

    def ping(self) -> None:
        """Always answers: the store is this process."""
