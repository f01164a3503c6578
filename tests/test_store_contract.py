"""One contract suite for every breaker store: MemoryStore (fake clock) and RedisStore (real
Redis, real server time). Time passes by advancing the fake clock or by waiting on the Redis
server clock (a condition, never a fixed sleep); no assertion depends on how long a step took.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
import redis

from breaker_service.errors import PolicyError
from breaker_service.outcomes import Outcome, OutcomeClass
from breaker_service.policy import BreakerPolicy
from breaker_service.scope import Scope
from breaker_service.store import (
    AcquireResult,
    BreakerStore,
    MemoryStore,
    RecordItem,
    ScopeGrant,
    Transition,
)
from breaker_service.store.redis import RedisStore
from fleet.testing import wait_until

PROVIDER = Scope("sambanova")
MODEL = Scope("sambanova", "llama-70b")

OK = Outcome(OutcomeClass.SUCCESS, latency_ms=10)
FAIL = Outcome(OutcomeClass.FAILURE, latency_ms=10)
IGNORED = Outcome(OutcomeClass.IGNORED, latency_ms=10)
CREDENTIAL = Outcome(OutcomeClass.CREDENTIAL, status=401)


def pol(**kw: Any) -> BreakerPolicy:
    """A test policy: small times, only the rule under test reachable unless overridden."""
    base: dict[str, Any] = {
        "suspect_cap": True,  # opt-in in production; the contract covers it on
        "window_ms": 60_000,  # tests about sliding set their own
        "buckets": 10,
        "minimum_calls": 4,
        "failure_rate_threshold": 0.5,
        "consecutive_failures": 100,
        "slow_call_ms": 1_000,
        "slow_call_rate_threshold": 1.0,
        "half_open_max_probes": 1,
        "half_open_successes": 1,
        "probe_lease_ms": 10_000,
        "open_base_ms": 5_000,
        "open_cap_ms": 60_000,
        "jitter_ratio": 0.0,
    }
    return BreakerPolicy(**{**base, **kw})


@dataclass
class Harness:
    """A store plus a way to let time pass on that store's clock."""

    kind: str
    store: BreakerStore
    clock: list[int] = field(default_factory=lambda: [1_000_000])
    client: redis.Redis | None = None

    def store_now_ms(self) -> int:
        if self.client is None:
            return self.clock[0]
        sec, usec = cast(tuple[int, int], self.client.time())
        return int(sec) * 1000 + int(usec) // 1000

    def elapse(self, ms: int) -> None:
        """Let ``ms`` pass on the store's clock (fake clock, or wait on Redis TIME)."""
        if self.client is None:
            self.clock[0] += ms
            return
        target = self.store_now_ms() + ms
        wait_until(
            lambda: self.store_now_ms() >= target,
            timeout_s=ms / 1000 + 10,
            interval_s=0.01,
            message=f"redis TIME to pass {ms} ms",
        )

    def call(
        self,
        outcome: Outcome,
        policy: BreakerPolicy,
        scopes: tuple[Scope, ...] = (MODEL,),
        jitter: float = 0.0,
    ) -> tuple[AcquireResult, list[Transition]]:
        """acquire + record one call; returns the acquire result and every transition."""
        res, trs = self.store.acquire([(s, policy) for s in scopes])
        if res.allowed:
            trs += self.store.record([(g, policy) for g in res.grants], outcome, jitter=jitter)
        return res, trs


@pytest.fixture(params=["memory", "redis"])
def h(request: pytest.FixtureRequest) -> Iterator[Harness]:
    """The store under test: ``memory`` (fake clock) or ``redis`` (real server time)."""
    if request.param == "memory":
        clock = [1_000_000]
        yield Harness("memory", MemoryStore(clock_ms=lambda: clock[0]), clock)
        return
    url = request.getfixturevalue("redis_url")
    client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    yield Harness("redis", RedisStore(client, namespace="test"), client=client)
    client.close()


def trip(h: Harness, policy: BreakerPolicy, scope: Scope = MODEL) -> Transition:
    """Trip ``scope`` with consecutive failures; returns the trip transition."""
    for _ in range(policy.consecutive_failures):
        _, trs = h.call(FAIL, policy, (scope,))
        if trs:
            (tr,) = trs
            return tr
    raise AssertionError("scope did not trip")


# -- trip rules -------------------------------------------------------------------------------


def test_consecutive_failures_trip_with_threshold_and_value(h: Harness) -> None:
    p = pol(consecutive_failures=3, minimum_calls=100)
    assert h.call(FAIL, p)[1] == []
    assert h.call(FAIL, p)[1] == []
    _, trs = h.call(FAIL, p)
    (tr,) = trs
    assert (tr.scope, tr.from_state, tr.to_state, tr.trigger) == (
        MODEL,
        "closed",
        "open",
        "consecutive",
    )
    assert (tr.threshold, tr.value, tr.generation) == (3.0, 3.0, 1)
    assert tr.open_until_ms == tr.at_ms + p.open_base_ms
    res, _ = h.store.acquire([(MODEL, p)])
    assert not res.allowed
    assert (res.rejected_scope, res.reason) == (MODEL, "open")
    assert 0 < res.retry_after_ms <= p.open_base_ms


def test_success_resets_consecutive_counter(h: Harness) -> None:
    p = pol(consecutive_failures=3, minimum_calls=100)
    for outcome in (FAIL, FAIL, OK, FAIL, FAIL):
        assert h.call(outcome, p)[1] == []
    assert h.store.snapshot(MODEL, p).consecutive_failures == 2


def test_failure_rate_trips_only_with_minimum_calls(h: Harness) -> None:
    p = pol(minimum_calls=4, failure_rate_threshold=0.5)
    for _ in range(3):  # rate 1.0 but only 3 calls in the window
        assert h.call(FAIL, p)[1] == []
    _, trs = h.call(FAIL, p)
    (tr,) = trs
    assert (tr.trigger, tr.threshold, tr.value) == ("failure_rate", 0.5, 1.0)


def test_failure_rate_value_is_the_measured_rate(h: Harness) -> None:
    p = pol(minimum_calls=4, failure_rate_threshold=0.5)
    for outcome in (OK, FAIL, OK):
        assert h.call(outcome, p)[1] == []
    _, trs = h.call(FAIL, p)  # 2 failures / 4 calls = 0.5 >= 0.5
    (tr,) = trs
    assert (tr.trigger, tr.threshold, tr.value) == ("failure_rate", 0.5, 0.5)


def test_below_failure_rate_threshold_stays_closed(h: Harness) -> None:
    p = pol(minimum_calls=4, failure_rate_threshold=0.6)
    for outcome in (OK, FAIL, OK, FAIL, OK, FAIL):  # 3/6 = 0.5 < 0.6
        assert h.call(outcome, p)[1] == []
    snap = h.store.snapshot(MODEL, p)
    assert (snap.state, snap.calls, snap.failures, snap.failure_rate) == ("closed", 6, 3, 0.5)


def test_slow_calls_trip(h: Harness) -> None:
    p = pol(minimum_calls=4, slow_call_ms=100, slow_call_rate_threshold=0.75)
    slow = Outcome(OutcomeClass.SUCCESS, latency_ms=250)
    for outcome in (slow, OK, slow):
        assert h.call(outcome, p)[1] == []
    _, trs = h.call(slow, p)  # 3 slow of 4
    (tr,) = trs
    assert (tr.trigger, tr.threshold, tr.value) == ("slow_calls", 0.75, 0.75)


def test_ignored_outcomes_are_not_counted(h: Harness) -> None:
    p = pol(consecutive_failures=3, minimum_calls=100)
    for outcome in (FAIL, IGNORED, IGNORED, FAIL, IGNORED):
        assert h.call(outcome, p)[1] == []
    snap = h.store.snapshot(MODEL, p)
    assert (snap.calls, snap.failures, snap.consecutive_failures) == (2, 2, 2)
    # ignored did not reset the consecutive counter either: the next failure is the third
    _, trs = h.call(FAIL, p)
    assert [t.trigger for t in trs] == ["consecutive"]


def test_rate_limited_opens_at_least_retry_after(h: Harness) -> None:
    p = pol(consecutive_failures=2, open_base_ms=300)
    limited = Outcome(OutcomeClass.RATE_LIMITED, status=429, retry_after_ms=7_000)
    assert h.call(limited, p)[1] == []
    _, trs = h.call(limited, p)
    (tr,) = trs
    assert tr.to_state == "open"
    assert tr.open_until_ms is not None
    assert tr.open_until_ms - tr.at_ms == 7_000
    res, _ = h.store.acquire([(MODEL, p)])
    assert res.reason == "open"
    assert res.retry_after_ms > 300


def test_credential_trips_at_once_and_stays_open_past_cap(h: Harness) -> None:
    p = pol(open_base_ms=100, open_cap_ms=100)
    _, trs = h.call(CREDENTIAL, p)
    (tr,) = trs
    assert (tr.trigger, tr.to_state, tr.open_until_ms) == ("credential", "open", None)
    h.elapse(300)  # three times the cap
    res, trs = h.store.acquire([(MODEL, p)])
    assert (res.allowed, res.reason, trs) == (False, "credential", [])
    assert res.retry_after_ms == 60_000
    tr = h.store.control(MODEL, p, "reset")
    assert (tr.from_state, tr.to_state) == ("open", "closed")
    assert h.store.acquire([(MODEL, p)])[0].allowed


# -- open, half-open, close -------------------------------------------------------------------


def test_open_moves_to_half_open_exactly_once_under_concurrency(h: Harness) -> None:
    p = pol(consecutive_failures=1, open_base_ms=300, half_open_max_probes=3)
    trip(h, p)
    h.elapse(300)
    barrier = threading.Barrier(8)
    results: list[tuple[AcquireResult, list[Transition]]] = []
    lock = threading.Lock()

    def worker() -> None:
        barrier.wait()
        out = h.store.acquire([(MODEL, p)])
        with lock:
            results.append(out)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    transitions = [tr for _, trs in results for tr in trs]
    assert len(transitions) == 1
    (tr,) = transitions
    assert (tr.from_state, tr.to_state, tr.trigger) == ("open", "half_open", "open_elapsed")
    assert tr.threshold == 300.0
    assert tr.value >= 300.0
    allowed = [r for r, _ in results if r.allowed]
    assert len(allowed) == 3  # the probe limit
    assert all(r.grants[0].probe_token for r in allowed)
    assert len({r.grants[0].probe_token for r in allowed}) == 3
    assert {r.reason for r, _ in results if not r.allowed} == {"half_open_full"}


def test_probe_limit_and_lease_expiry(h: Harness) -> None:
    p = pol(consecutive_failures=1, open_base_ms=100, half_open_max_probes=2, probe_lease_ms=1_500)
    trip(h, p)
    h.elapse(100)
    first, _ = h.store.acquire([(MODEL, p)])
    second, _ = h.store.acquire([(MODEL, p)])
    third, _ = h.store.acquire([(MODEL, p)])
    assert first.allowed and second.allowed
    assert (third.allowed, third.reason) == (False, "half_open_full")
    assert 0 < third.retry_after_ms <= 1_500
    assert h.store.snapshot(MODEL, p).probes_in_flight == 2
    # both probers die without recording: their leases expire and free the slots
    h.elapse(1_500)
    assert h.store.snapshot(MODEL, p).probes_in_flight == 0
    again, trs = h.store.acquire([(MODEL, p)])
    assert again.allowed and again.grants[0].probe_token
    assert trs == []  # still the same half-open period
    assert h.store.snapshot(MODEL, p).state == "half_open"


def test_ignored_probe_frees_its_lease(h: Harness) -> None:
    p = pol(consecutive_failures=1, open_base_ms=100)
    trip(h, p)
    h.elapse(100)
    res, _ = h.store.acquire([(MODEL, p)])
    assert h.store.acquire([(MODEL, p)])[0].reason == "half_open_full"
    assert h.store.record([(res.grants[0], p)], IGNORED, jitter=0) == []
    snap = h.store.snapshot(MODEL, p)
    assert (snap.state, snap.probes_in_flight, snap.probe_successes) == ("half_open", 0, 0)
    assert h.store.acquire([(MODEL, p)])[0].allowed


def test_late_probe_success_after_lease_expiry_still_counts(h: Harness) -> None:
    p = pol(consecutive_failures=1, open_base_ms=100, probe_lease_ms=300, half_open_successes=2)
    trip(h, p)
    h.elapse(100)
    slow, _ = h.store.acquire([(MODEL, p)])
    h.elapse(300)  # the slow prober's lease lapses: another caller may probe
    fresh, trs = h.store.acquire([(MODEL, p)])
    assert fresh.allowed and trs == []
    assert h.store.record([(slow.grants[0], p)], OK, jitter=0) == []
    (tr,) = h.store.record([(fresh.grants[0], p)], OK, jitter=0)
    assert (tr.to_state, tr.value) == ("closed", 2.0)


def test_k_probe_successes_close_with_fresh_window(h: Harness) -> None:
    p = pol(consecutive_failures=1, open_base_ms=100, half_open_max_probes=2,
            half_open_successes=2)  # fmt: skip
    trip(h, p)
    h.elapse(100)
    a, _ = h.store.acquire([(MODEL, p)])
    b, _ = h.store.acquire([(MODEL, p)])
    assert h.store.record([(a.grants[0], p)], OK, jitter=0) == []
    snap = h.store.snapshot(MODEL, p)
    assert (snap.state, snap.probe_successes, snap.probes_in_flight) == ("half_open", 1, 1)
    (tr,) = h.store.record([(b.grants[0], p)], OK, jitter=0)
    assert (tr.from_state, tr.to_state, tr.trigger) == ("half_open", "closed", "probes_succeeded")
    assert (tr.threshold, tr.value) == (2.0, 2.0)
    snap = h.store.snapshot(MODEL, p)
    assert (snap.state, snap.trips, snap.calls, snap.generation) == ("closed", 0, 0, tr.generation)


def test_probe_failure_reopens_with_longer_open_time(h: Harness) -> None:
    p = pol(consecutive_failures=1, open_base_ms=200, backoff_factor=2.0)
    first = trip(h, p)
    assert first.open_until_ms is not None
    assert first.open_until_ms - first.at_ms == 200
    h.elapse(200)
    res, _ = h.store.acquire([(MODEL, p)])
    (tr,) = h.store.record([(res.grants[0], p)], FAIL, jitter=0)
    assert (tr.from_state, tr.to_state, tr.trigger) == ("half_open", "open", "probe_failed")
    assert tr.open_until_ms is not None
    assert tr.open_until_ms - tr.at_ms == 400
    assert h.store.snapshot(MODEL, p).trips == 2


def test_open_time_jitter_and_cap(h: Harness) -> None:
    p = pol(consecutive_failures=1, open_base_ms=1_000, open_cap_ms=1_500, jitter_ratio=0.2)
    (res, _) = h.store.acquire([(MODEL, p)])
    (tr,) = h.store.record([(res.grants[0], p)], FAIL, jitter=0.5)
    assert tr.open_until_ms is not None
    assert tr.open_until_ms - tr.at_ms == 1_100  # base * (1 + 0.2 * 0.5)
    h.store.control(MODEL, p, "reset")
    assert p.open_ms_for(5) == 1_500  # the cap bounds the backoff


@pytest.mark.parametrize("jitter", [float("nan"), float("inf"), -3.0])
def test_bad_jitter_never_breaks_the_open_period(h: Harness, jitter: float) -> None:
    p = pol(consecutive_failures=1, open_base_ms=1_000, jitter_ratio=0.5)
    res, _ = h.store.acquire([(MODEL, p)])
    (tr,) = h.store.record([(res.grants[0], p)], FAIL, jitter=jitter)
    assert tr.open_until_ms is not None
    assert tr.open_until_ms - tr.at_ms == 1_000


def test_non_probe_success_does_not_close_half_open(h: Harness) -> None:
    p = pol(consecutive_failures=1, open_base_ms=100)
    trip(h, p)
    h.elapse(100)
    res, (_tr,) = h.store.acquire([(MODEL, p)])
    fake = ScopeGrant(MODEL, res.grants[0].generation, None)
    assert h.store.record([(fake, p)], OK, jitter=0) == []
    assert h.store.snapshot(MODEL, p).state == "half_open"


def test_old_generation_outcome_does_not_change_state(h: Harness) -> None:
    p = pol(consecutive_failures=2, open_base_ms=100)
    slow_res, _ = h.store.acquire([(MODEL, p)])  # a call that started before the trip
    old = slow_res.grants[0]
    trip(h, p)
    before = h.store.snapshot(MODEL, p)
    assert h.store.record([(old, p)], FAIL, jitter=0) == []
    after = h.store.snapshot(MODEL, p)
    assert (after.state, after.generation) == ("open", before.generation)
    assert after.calls == before.calls + 1  # metrics only
    h.elapse(100)
    res, _ = h.store.acquire([(MODEL, p)])
    assert res.grants[0].probe_token
    # the pre-trip call finishing well does not count as a probe, nor close the breaker
    assert h.store.record([(old, p)], OK, jitter=0) == []
    snap = h.store.snapshot(MODEL, p)
    assert (snap.state, snap.probe_successes) == ("half_open", 0)


def test_concurrent_failures_trip_exactly_once(h: Harness) -> None:
    p = pol(consecutive_failures=5, minimum_calls=1_000, open_base_ms=60_000)
    barrier = threading.Barrier(8)
    seen: list[Transition] = []
    lock = threading.Lock()

    def worker() -> None:
        barrier.wait()
        for _ in range(10):
            _, trs = h.call(FAIL, p)
            with lock:
                seen.extend(trs)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [(t.from_state, t.to_state, t.trigger) for t in seen] == [
        ("closed", "open", "consecutive")
    ]
    snap = h.store.snapshot(MODEL, p)
    assert (snap.state, snap.trips, snap.generation) == ("open", 1, 1)


def test_policy_with_other_buckets_starts_a_fresh_window(h: Harness) -> None:
    p10 = pol(window_ms=2_000, buckets=10)
    p20 = pol(window_ms=2_000, buckets=20)
    for _ in range(3):
        h.call(FAIL, p10)
    h.call(FAIL, p20)
    snap = h.store.snapshot(MODEL, p20)
    assert (snap.calls, snap.failures) == (1, 1)


# -- several scopes ---------------------------------------------------------------------------


def test_multi_scope_acquire_rejects_and_takes_nothing(h: Harness) -> None:
    p = pol(consecutive_failures=1, open_base_ms=100)
    trip(h, p, MODEL)
    h.elapse(100)  # the model scope could now hand out a probe lease
    trip(h, pol(consecutive_failures=1, open_base_ms=60_000, open_cap_ms=60_000), PROVIDER)
    res, trs = h.store.acquire([(MODEL, p), (PROVIDER, p)])
    assert (res.allowed, res.rejected_scope, res.reason, res.grants) == (
        False,
        PROVIDER,
        "open",
        (),
    )
    assert trs == []
    snap = h.store.snapshot(MODEL, p)
    assert (snap.state, snap.probes_in_flight) == ("open", 0)


def test_multi_scope_grants_and_record_counts_each_scope(h: Harness) -> None:
    p = pol()
    res, _ = h.call(FAIL, p, (PROVIDER, MODEL))
    assert [g.scope for g in res.grants] == [PROVIDER, MODEL]
    assert all(g.probe_token is None and g.generation == 0 for g in res.grants)
    other = Scope("sambanova", "llama-8b")
    h.call(OK, p, (PROVIDER, other))
    assert h.store.snapshot(PROVIDER, p).calls == 2
    assert (h.store.snapshot(MODEL, p).calls, h.store.snapshot(other, p).calls) == (1, 1)
    assert h.store.scopes() == sorted([PROVIDER, MODEL, other])


# -- manual control ---------------------------------------------------------------------------


def test_force_open_rejects_and_does_not_expire(h: Harness) -> None:
    p = pol(open_base_ms=100, open_cap_ms=100)
    tr = h.store.control(MODEL, p, "force_open")
    assert (tr.from_state, tr.to_state, tr.trigger, tr.generation) == (
        "closed",
        "forced_open",
        "manual",
        1,
    )
    h.elapse(200)
    res, trs = h.store.acquire([(MODEL, p)])
    assert (res.allowed, res.reason, res.retry_after_ms, trs) == (False, "forced_open", 60_000, [])


def test_force_closed_never_trips_but_records(h: Harness) -> None:
    p = pol(consecutive_failures=1, minimum_calls=1)
    h.store.control(MODEL, p, "force_closed")
    for outcome in (FAIL, FAIL, CREDENTIAL):
        res, trs = h.call(outcome, p)
        assert res.allowed and trs == []
    snap = h.store.snapshot(MODEL, p)
    assert (snap.state, snap.calls, snap.failures) == ("forced_closed", 3, 3)


def test_disable_allows_and_records_metrics_only(h: Harness) -> None:
    p = pol(consecutive_failures=1)
    trip(h, p)
    tr = h.store.control(MODEL, p, "disable")
    assert (tr.from_state, tr.to_state) == ("open", "disabled")
    res, trs = h.call(FAIL, p)
    assert res.allowed and trs == []
    assert h.store.snapshot(MODEL, p).state == "disabled"


def test_reset_closes_with_fresh_window_and_no_trips(h: Harness) -> None:
    p = pol(consecutive_failures=1)
    trip(h, p)
    h.call(FAIL, pol(), (PROVIDER,))
    tr = h.store.control(MODEL, p, "reset")
    assert (tr.from_state, tr.to_state, tr.trigger) == ("open", "closed", "manual")
    snap = h.store.snapshot(MODEL, p)
    assert (snap.state, snap.trips, snap.calls, snap.consecutive_failures) == ("closed", 0, 0, 0)
    assert snap.generation == tr.generation == 2
    assert h.store.acquire([(MODEL, p)])[0].allowed


def test_control_rejects_unknown_action(h: Harness) -> None:
    with pytest.raises(ValueError, match="force_open"):
        h.store.control(MODEL, pol(), "explode")  # type: ignore[arg-type]


# -- window and snapshot ----------------------------------------------------------------------


def test_window_slides_old_failures_expire(h: Harness) -> None:
    p = pol(minimum_calls=4, window_ms=2_000, buckets=10)
    for _ in range(3):
        assert h.call(FAIL, p)[1] == []
    assert h.store.snapshot(MODEL, p).calls == 3
    h.elapse(2_000)
    assert h.store.snapshot(MODEL, p).calls == 0
    assert h.call(FAIL, p)[1] == []  # only 1 call in the window now: no trip
    snap = h.store.snapshot(MODEL, p)
    assert (snap.calls, snap.failures, snap.consecutive_failures) == (1, 1, 4)


def test_snapshot_fields(h: Harness) -> None:
    p = pol(minimum_calls=100, slow_call_ms=100)
    for outcome in (OK, FAIL, Outcome(OutcomeClass.SUCCESS, latency_ms=500), FAIL):
        h.call(outcome, p)
    snap = h.store.snapshot(MODEL, p)
    assert snap.scope == MODEL
    assert (snap.state, snap.generation, snap.open_until_ms, snap.trips) == ("closed", 0, None, 0)
    assert (snap.calls, snap.failures, snap.slow_calls) == (4, 2, 1)
    assert (snap.failure_rate, snap.slow_rate, snap.consecutive_failures) == (0.5, 0.25, 1)
    assert (snap.probes_in_flight, snap.probe_successes) == (0, 0)
    assert snap.now_ms >= h.store_now_ms() - 1_000
    unknown = h.store.snapshot(Scope("nobody"), p)
    assert (unknown.state, unknown.calls, unknown.generation) == ("closed", 0, 0)


def test_state_is_constant_size_after_many_records(h: Harness) -> None:
    p = pol(window_ms=2_000, buckets=10, minimum_calls=10**6)
    for i in range(2_000):
        res, _ = h.store.acquire([(MODEL, p)])
        h.store.record([(res.grants[0], p)], FAIL if i % 3 else OK, jitter=0)
        if i % 500 == 0:
            h.elapse(300)  # move through several buckets
    snap = h.store.snapshot(MODEL, p)
    assert snap.state == "closed"
    assert 0 < snap.calls <= 2_000
    assert snap.failures <= snap.calls


def test_ping_answers(h: Harness) -> None:
    h.store.ping()


# -- Scope ------------------------------------------------------------------------------------


# -- aggregated successes (the background sender's coalesced records) -----------------------

SLOW_OK = Outcome(OutcomeClass.SUCCESS, latency_ms=5_000)
TWIN = Scope("sambanova", "twin")


def _grant(h: Harness, scope: Scope, p: BreakerPolicy) -> ScopeGrant:
    res, _ = h.store.acquire([(scope, p)])
    assert res.allowed
    return res.grants[0]


def _view(h: Harness, scope: Scope, p: BreakerPolicy) -> tuple[object, ...]:
    s = h.store.snapshot(scope, p)
    return (s.state, s.generation, s.calls, s.failures, s.slow_calls, s.consecutive_failures)


def _rule(trs: list[Transition]) -> list[tuple[object, ...]]:
    return [(t.from_state, t.to_state, t.trigger, t.threshold, round(t.value, 9)) for t in trs]


def _singles_vs_aggregate(
    h: Harness, p: BreakerPolicy, before: list[Outcome], fast: int, slow: int
) -> None:
    """MODEL gets ``fast`` then ``slow`` single successes, TWIN one aggregate of them; both
    first see the same ``before`` outcomes. Everything observable must match."""
    # every call started before any was recorded (if ``before`` trips, the rest is old news)
    grant, twin = _grant(h, MODEL, p), _grant(h, TWIN, p)
    for g in (grant, twin):
        for outcome in before:
            h.store.record([(g, p)], outcome, jitter=0)
    singles: list[Transition] = []
    for outcome in [OK] * fast + [SLOW_OK] * slow:
        singles += h.store.record([(grant, p)], outcome, jitter=0)
    if fast + slow:
        aggregate = h.store.record([(twin, p)], OK, jitter=0, count=fast + slow, slow=(slow,))
        assert _rule(aggregate) == _rule(singles)
    assert _view(h, TWIN, p) == _view(h, MODEL, p)


@pytest.mark.parametrize(
    ("before", "fast", "slow"),
    [
        ([], 7, 0),  # nothing to trip: only the window grows
        ([], 5, 2),  # slow calls below the rate
        ([FAIL, FAIL, FAIL], 3, 0),  # consecutive failures reset
        ([SLOW_OK, SLOW_OK, SLOW_OK], 5, 0),  # the 1st fast call reaches min_calls: trips
        ([], 2, 4),  # trips at the 2nd slow call; the 2 after it land in the fresh window
        ([OK, OK, OK, OK, OK, OK], 1, 6),  # trips once enough slow calls pile up
        ([SLOW_OK], 1, 1),  # trips exactly at the last call
    ],
)
def test_aggregate_equals_singles(h: Harness, before: list[Outcome], fast: int, slow: int) -> None:
    p = pol(minimum_calls=4, slow_call_rate_threshold=0.5, consecutive_failures=10)
    _singles_vs_aggregate(h, p, before, fast, slow)


def test_aggregate_equals_singles_randomised(h: Harness) -> None:
    rng = random.Random(7)
    for trial in range(12 if h.kind == "redis" else 60):
        p = pol(
            minimum_calls=rng.randint(1, 8),
            slow_call_rate_threshold=rng.choice([0.2, 0.5, 0.75, 1.0]),
            consecutive_failures=1_000,
        )
        before = [rng.choice([OK, SLOW_OK, FAIL]) for _ in range(rng.randint(0, 6))]
        h.store.control(MODEL, p, "reset")
        h.store.control(TWIN, p, "reset")
        try:
            _singles_vs_aggregate(h, p, before, rng.randint(0, 6), rng.randint(0, 6))
        except AssertionError as exc:
            raise AssertionError(f"trial {trial}: {p} before={before}") from exc


def test_aggregate_counts_slow_calls_per_scope(h: Harness) -> None:
    p = pol()
    res, _ = h.store.acquire([(PROVIDER, p), (MODEL, p)])
    pairs = [(g, p) for g in res.grants]
    assert h.store.record(pairs, OK, jitter=0, count=5, slow=(3, 0)) == []
    prov, model = h.store.snapshot(PROVIDER, p), h.store.snapshot(MODEL, p)
    assert (prov.calls, prov.slow_calls, model.calls, model.slow_calls) == (5, 3, 5, 0)
    # slow=None judges the outcome's latency against each scope's slow_call_ms
    assert h.store.record(pairs, SLOW_OK, jitter=0, count=2) == []
    assert h.store.snapshot(PROVIDER, p).slow_calls == 5
    assert h.store.snapshot(MODEL, p).slow_calls == 2


def test_aggregate_in_half_open_never_closes(h: Harness) -> None:
    p = pol(consecutive_failures=1, open_base_ms=100, half_open_successes=1)
    trip(h, p)
    h.elapse(100)
    res, _ = h.store.acquire([(MODEL, p)])
    assert res.grants[0].probe_token  # the probe lease is held
    current = ScopeGrant(MODEL, res.grants[0].generation, None)
    assert h.store.record([(current, p)], OK, jitter=0, count=50) == []
    snap = h.store.snapshot(MODEL, p)
    assert (snap.state, snap.probe_successes, snap.calls) == ("half_open", 0, 50)
    assert snap.probes_in_flight == 1


def test_aggregate_of_old_generation_updates_window_only(h: Harness) -> None:
    p = pol(consecutive_failures=2, open_base_ms=60_000)
    old = _grant(h, MODEL, p)
    trip(h, p)
    before = h.store.snapshot(MODEL, p)
    assert h.store.record([(old, p)], SLOW_OK, jitter=0, count=9) == []
    after = h.store.snapshot(MODEL, p)
    assert (after.state, after.generation) == ("open", before.generation)
    assert (after.calls, after.slow_calls) == (before.calls + 9, before.slow_calls + 9)


@pytest.mark.parametrize(
    "case",
    [
        (OK, 0, None, None, "count"),
        (FAIL, 2, None, None, "count"),
        (OK, 2, None, "7", "count"),
        (OK, 2, (1, 1), None, "slow"),
        (OK, 2, (3,), None, "slow"),
        (OK, 2, (-1,), None, "slow"),
    ],
)
def test_bad_aggregates_are_refused(
    h: Harness, case: tuple[Outcome, int, tuple[int, ...] | None, str | None, str]
) -> None:
    outcome, count, slow, token, field = case
    p = pol()
    grant = ScopeGrant(MODEL, 0, token)
    with pytest.raises(PolicyError, match=field):
        h.store.record([(grant, p)], outcome, jitter=0, count=count, slow=slow)
    assert h.store.snapshot(MODEL, p).calls == 0


def test_record_many_applies_in_order(h: Harness) -> None:
    p = pol(consecutive_failures=3, minimum_calls=100)
    for scope in (MODEL, TWIN):
        h.call(FAIL, p, (scope,))
        h.call(FAIL, p, (scope,))
    m, t = _grant(h, MODEL, p), _grant(h, TWIN, p)
    successes = RecordItem(((m, p),), OK, count=4, slow=(0,))
    # pending successes first, then the failure: the success resets, the failure counts 1
    assert h.store.record_many([successes, RecordItem(((m, p),), FAIL)], jitter=0) == []
    assert h.store.snapshot(MODEL, p).consecutive_failures == 1
    # the other order trips (3 consecutive) and the successes land in the fresh window
    late = RecordItem(((t, p),), OK, count=4, slow=(0,))
    trs = h.store.record_many([RecordItem(((t, p),), FAIL), late], jitter=0)
    assert [tr.trigger for tr in trs] == ["consecutive"]
    snap = h.store.snapshot(TWIN, p)
    assert (snap.state, snap.calls, snap.consecutive_failures) == ("open", 4, 0)
    assert h.store.record_many([], jitter=0) == []


def test_scope_round_trips_and_sorts() -> None:
    assert str(MODEL) == "sambanova/llama-70b"
    assert Scope.parse("sambanova/llama-70b") == MODEL
    assert Scope.parse(" sambanova ") == PROVIDER
    assert MODEL.hash_tag == PROVIDER.hash_tag == "{sambanova}"
    assert MODEL.provider_scope == PROVIDER
    assert sorted([MODEL, Scope("a", "b"), PROVIDER]) == [Scope("a", "b"), PROVIDER, MODEL]
    assert len({MODEL, Scope("sambanova", "llama-70b"), PROVIDER}) == 2


@pytest.mark.parametrize("text", ["", "/x", "samba nova", "a/", "{a}/b", "a:b"])
def test_scope_parse_rejects_bad_text(text: str) -> None:
    with pytest.raises(PolicyError, match=r"provider|model|scope"):
        Scope.parse(text)


def test_store_package_exports() -> None:
    import breaker_service.store as pkg

    assert sorted(pkg.__all__) == sorted(
        [
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
    )
    assert all(hasattr(pkg, name) for name in pkg.__all__)


# -- suspect cap: a closed scope with failures in a row admits only what can still trip it --


def _suspect_grant(h: Harness, p: BreakerPolicy, scope: Scope = MODEL) -> ScopeGrant:
    res, _ = h.store.acquire([(scope, p)])
    assert res.allowed, res
    (grant,) = res.grants
    assert grant.lease_token is not None and grant.probe_token is None
    return grant


def _suspect_full(h: Harness, p: BreakerPolicy, scope: Scope = MODEL) -> AcquireResult:
    res, trs = h.store.acquire([(scope, p)])
    assert (res.allowed, res.rejected_scope, res.reason, res.grants, trs) == (
        False,
        scope,
        "suspect_full",
        (),
        [],
    )
    assert 1 <= res.retry_after_ms <= 250
    return res


def test_suspect_cap_is_the_failures_still_needed_to_trip(h: Harness) -> None:
    p = pol(consecutive_failures=4, minimum_calls=100)
    # no failure yet: unlimited, and no lease is taken
    free = [h.store.acquire([(MODEL, p)])[0] for _ in range(6)]
    assert all(r.allowed and r.grants[0].lease_token is None for r in free)
    assert h.call(FAIL, p)[1] == []  # cf = 1: 3 more failures would trip
    leases = [_suspect_grant(h, p) for _ in range(3)]
    assert len({g.lease_token for g in leases}) == 3
    _suspect_full(h, p)
    snap = h.store.snapshot(MODEL, p)
    assert (snap.suspect_in_flight, snap.probes_in_flight, snap.state) == (3, 0, "closed")
    # each failure lowers the cap by one and frees its own lease: still full
    assert h.store.record([(leases[0], p)], FAIL, jitter=0) == []  # cf 2, cap 2, held 2
    _suspect_full(h, p)
    assert h.store.record([(leases[1], p)], FAIL, jitter=0) == []  # cf 3, cap 1, held 1
    _suspect_full(h, p)
    (tr,) = h.store.record([(leases[2], p)], FAIL, jitter=0)  # cf 4: trips
    assert (tr.trigger, tr.threshold, tr.value) == ("consecutive", 4.0, 4.0)
    assert h.store.snapshot(MODEL, p).suspect_in_flight == 0


def test_cap_never_falls_below_one(h: Harness) -> None:
    p = pol(consecutive_failures=2, minimum_calls=100, open_base_ms=100, half_open_successes=1)
    old = h.store.acquire([(MODEL, p)])[0].grants[0]  # a call from before the outage
    trip(h, p)
    h.elapse(100)
    probe = h.store.acquire([(MODEL, p)])[0].grants[0]
    assert [t.to_state for t in h.store.record([(probe, p)], OK, jitter=0)] == ["closed"]
    # failures of an older generation count in cf but never trip: cf reaches the threshold
    for _ in range(2):
        assert h.store.record([(old, p)], FAIL, jitter=0) == []
    snap = h.store.snapshot(MODEL, p)
    assert (snap.state, snap.consecutive_failures) == ("closed", 2)
    lease = _suspect_grant(h, p)  # cap max(1, 2 - 2) = 1, not 0
    _suspect_full(h, p)
    (tr,) = h.store.record([(lease, p)], FAIL, jitter=0)
    assert (tr.trigger, tr.value) == ("consecutive", 3.0)


def test_success_ends_suspicion_and_drops_every_lease(h: Harness) -> None:
    p = pol(consecutive_failures=3, minimum_calls=100)
    assert h.call(FAIL, p)[1] == []
    # admitted after the failure without a lease (the cap is off for this acquire only), so
    # its success is not stale (a success admitted before the failure keeps cf: see below)
    uncapped = pol(consecutive_failures=3, minimum_calls=100, suspect_cap=False)
    before = h.store.acquire([(MODEL, uncapped)])[0].grants[0]
    assert before.lease_token is None
    held = [_suspect_grant(h, p), _suspect_grant(h, p)]
    _suspect_full(h, p)
    # a success of a lease-free call resets cf: every suspect lease goes
    assert h.store.record([(before, p)], OK, jitter=0) == []
    snap = h.store.snapshot(MODEL, p)
    assert (snap.consecutive_failures, snap.suspect_in_flight) == (0, 0)
    again = [h.store.acquire([(MODEL, p)])[0] for _ in range(5)]
    assert all(r.allowed and r.grants[0].lease_token is None for r in again)
    # a dropped lease recorded later counts as usual and frees nothing it should not
    assert h.store.record([(held[0], p)], FAIL, jitter=0) == []
    assert h.store.snapshot(MODEL, p).consecutive_failures == 1
    assert _suspect_grant(h, p).lease_token not in {g.lease_token for g in held}


def test_success_with_a_lease_ends_suspicion(h: Harness) -> None:
    p = pol(consecutive_failures=2, minimum_calls=100)
    assert h.call(FAIL, p)[1] == []
    lease = _suspect_grant(h, p)
    _suspect_full(h, p)
    assert h.store.record([(lease, p)], OK, jitter=0) == []
    snap = h.store.snapshot(MODEL, p)
    assert (snap.state, snap.consecutive_failures, snap.suspect_in_flight) == ("closed", 0, 0)
    assert h.store.acquire([(MODEL, p)])[0].grants[0].lease_token is None


def test_aggregated_success_ends_suspicion(h: Harness) -> None:
    p = pol(consecutive_failures=2, minimum_calls=100)
    assert h.call(FAIL, p)[1] == []
    # lease-free and admitted after the failure (cap off for this acquire): not stale
    uncapped = pol(consecutive_failures=2, minimum_calls=100, suspect_cap=False)
    plain = h.store.acquire([(MODEL, uncapped)])[0].grants[0]
    _suspect_grant(h, p)
    assert h.store.record([(plain, p)], OK, jitter=0, count=3, slow=(0,)) == []
    assert h.store.snapshot(MODEL, p).suspect_in_flight == 0
    assert h.store.acquire([(MODEL, p)])[0].allowed


def test_trip_clears_suspect_leases(h: Harness) -> None:
    p = pol(consecutive_failures=3, minimum_calls=100, open_base_ms=100)
    early = [h.store.acquire([(MODEL, p)])[0].grants[0] for _ in range(2)]
    assert h.store.record([(early[0], p)], FAIL, jitter=0) == []  # cf 1, cap 2
    first, second = _suspect_grant(h, p), _suspect_grant(h, p)
    assert h.store.record([(early[1], p)], FAIL, jitter=0) == []  # cf 2, cap 1
    (tr,) = h.store.record([(first, p)], FAIL, jitter=0)  # cf 3: trip
    assert tr.to_state == "open"
    snap = h.store.snapshot(MODEL, p)
    assert (snap.state, snap.suspect_in_flight) == ("open", 0)
    # the next closed period starts with no lease of the old one counted
    h.store.control(MODEL, p, "reset")
    assert h.call(FAIL, p)[1] == []  # cf 1, cap 2: two fresh leases
    _suspect_grant(h, p)
    _suspect_grant(h, p)
    _suspect_full(h, p)
    assert h.store.record([(second, p)], IGNORED, jitter=0) == []  # stale token: no effect
    assert h.store.snapshot(MODEL, p).suspect_in_flight == 2


def test_control_drops_suspect_leases(h: Harness) -> None:
    p = pol(consecutive_failures=2, minimum_calls=100)
    assert h.call(FAIL, p)[1] == []
    _suspect_grant(h, p)
    h.store.control(MODEL, p, "force_closed")
    assert h.store.snapshot(MODEL, p).suspect_in_flight == 0
    assert all(h.store.acquire([(MODEL, p)])[0].allowed for _ in range(3))


def test_suspect_lease_expiry_frees_a_slot(h: Harness) -> None:
    p = pol(consecutive_failures=2, minimum_calls=100, probe_lease_ms=300)
    assert h.call(FAIL, p)[1] == []  # cap 1
    _suspect_grant(h, p)  # its holder dies: never recorded
    _suspect_full(h, p)
    h.elapse(300)
    assert h.store.snapshot(MODEL, p).suspect_in_flight == 0
    _suspect_grant(h, p)
    assert h.store.snapshot(MODEL, p).suspect_in_flight == 1  # the expired one was reclaimed
    _suspect_full(h, p)


def test_ignored_frees_a_suspect_lease_without_counting(h: Harness) -> None:
    p = pol(consecutive_failures=2, minimum_calls=100)
    assert h.call(FAIL, p)[1] == []
    lease = _suspect_grant(h, p)
    _suspect_full(h, p)
    assert h.store.record([(lease, p)], IGNORED, jitter=0) == []
    snap = h.store.snapshot(MODEL, p)
    assert (snap.calls, snap.consecutive_failures, snap.suspect_in_flight) == (1, 1, 0)
    _suspect_grant(h, p)


def test_multi_scope_reject_takes_no_suspect_lease(h: Harness) -> None:
    p = pol(consecutive_failures=3, minimum_calls=100)
    assert h.call(FAIL, p, (MODEL,))[1] == []  # MODEL suspect, cap 2
    trip(h, pol(consecutive_failures=1, open_base_ms=60_000, open_cap_ms=60_000), PROVIDER)
    res, trs = h.store.acquire([(MODEL, p), (PROVIDER, p)])
    assert (res.allowed, res.rejected_scope, res.reason, trs) == (False, PROVIDER, "open", [])
    assert h.store.snapshot(MODEL, p).suspect_in_flight == 0
    # a suspect_full scope blocks the call: the other suspect scope takes nothing either
    twin_policy = pol(consecutive_failures=2, minimum_calls=100)
    assert h.call(FAIL, twin_policy, (TWIN,))[1] == []  # TWIN cap 1
    _suspect_grant(h, twin_policy, TWIN)
    res, _ = h.store.acquire([(MODEL, p), (TWIN, twin_policy)])
    assert (res.allowed, res.rejected_scope, res.reason) == (False, TWIN, "suspect_full")
    assert h.store.snapshot(MODEL, p).suspect_in_flight == 0
    # both suspect and both with room: a lease on each
    res, _ = h.store.acquire([(MODEL, p), (Scope("sambanova", "other"), p)])
    assert res.allowed
    assert [g.lease_token is not None for g in res.grants] == [True, False]


def test_suspect_cap_off_admits_freely(h: Harness) -> None:
    p = pol(consecutive_failures=3, minimum_calls=100, suspect_cap=False)
    assert h.call(FAIL, p)[1] == []
    assert h.call(FAIL, p)[1] == []
    grants = [h.store.acquire([(MODEL, p)])[0] for _ in range(10)]
    assert all(r.allowed and r.grants[0].lease_token is None for r in grants)
    assert h.store.snapshot(MODEL, p).suspect_in_flight == 0
    (tr,) = h.store.record([(grants[0].grants[0], p)], FAIL, jitter=0)
    assert tr.trigger == "consecutive"


# -- stale successes: a success admitted before a counted failure does not reset cf --------


def test_stale_successes_do_not_delay_the_consecutive_trip(h: Harness) -> None:
    p = pol(consecutive_failures=3, minimum_calls=100)
    early = [h.store.acquire([(MODEL, p)])[0].grants[0] for _ in range(4)]
    assert {g.fail_seq for g in early} == {0}
    assert h.store.record([(early[0], p)], FAIL, jitter=0) == []  # cf 1, fs 1
    # a success admitted before that failure arrives late: counted, but cf stays
    assert h.store.record([(early[1], p)], OK, jitter=0) == []
    snap = h.store.snapshot(MODEL, p)
    assert (snap.consecutive_failures, snap.fail_seq, snap.calls, snap.failures) == (1, 1, 2, 1)
    lease = _suspect_grant(h, p)
    assert lease.fail_seq == 1
    assert h.store.record([(early[2], p)], FAIL, jitter=0) == []  # cf 2, fs 2
    assert h.store.record([(early[3], p)], SLOW_OK, jitter=0) == []  # stale again
    snap = h.store.snapshot(MODEL, p)
    assert (snap.consecutive_failures, snap.calls, snap.slow_calls) == (2, 4, 1)
    assert snap.suspect_in_flight == 1  # the stale success dropped no lease
    (tr,) = h.store.record([(lease, p)], FAIL, jitter=0)  # cf 3: trips at the threshold
    assert (tr.trigger, tr.threshold, tr.value) == ("consecutive", 3.0, 3.0)


def test_stale_success_frees_only_its_own_lease(h: Harness) -> None:
    p = pol(consecutive_failures=4, minimum_calls=100)
    assert h.call(FAIL, p)[1] == []  # cf 1, fs 1, cap 3
    mine, other = _suspect_grant(h, p), _suspect_grant(h, p)
    assert mine.fail_seq == other.fail_seq == 1
    third = _suspect_grant(h, p)
    assert h.store.record([(third, p)], FAIL, jitter=0) == []  # cf 2, fs 2, cap 2, held 2
    _suspect_full(h, p)
    assert h.store.record([(mine, p)], OK, jitter=0) == []  # stale: frees its own lease only
    snap = h.store.snapshot(MODEL, p)
    assert (snap.consecutive_failures, snap.fail_seq, snap.suspect_in_flight) == (2, 2, 1)
    fresh = _suspect_grant(h, p)  # cap 2, held 1: one slot again
    assert fresh.fail_seq == 2
    _suspect_full(h, p)
    # a success admitted after the latest failure resets cf and drops every lease
    assert h.store.record([(fresh, p)], OK, jitter=0) == []
    snap = h.store.snapshot(MODEL, p)
    assert (snap.consecutive_failures, snap.fail_seq, snap.suspect_in_flight) == (0, 2, 0)
    assert snap.calls == 4
    assert h.store.acquire([(MODEL, p)])[0].grants[0].lease_token is None
    # other's record (a failure) still counts, against the fresh counter
    assert h.store.record([(other, p)], FAIL, jitter=0) == []
    snap = h.store.snapshot(MODEL, p)
    assert (snap.consecutive_failures, snap.fail_seq) == (1, 3)


def test_stale_aggregate_counts_in_window_but_keeps_cf(h: Harness) -> None:
    p = pol(consecutive_failures=3, minimum_calls=100, slow_call_ms=50)
    early = [h.store.acquire([(MODEL, p)])[0].grants[0] for _ in range(2)]
    assert h.store.record([(early[0], p)], FAIL, jitter=0) == []  # cf 1, fs 1
    lease = _suspect_grant(h, p)
    # a coalesced batch of successes admitted before the failure
    assert h.store.record([(early[1], p)], OK, jitter=0, count=5, slow=(2,)) == []
    snap = h.store.snapshot(MODEL, p)
    assert (snap.calls, snap.failures, snap.slow_calls) == (6, 1, 2)
    assert (snap.consecutive_failures, snap.suspect_in_flight) == (1, 1)
    # a batch admitted after it resets cf and drops the leases
    uncapped = pol(consecutive_failures=3, minimum_calls=100, slow_call_ms=50, suspect_cap=False)
    late = h.store.acquire([(MODEL, uncapped)])[0].grants[0]
    assert (late.fail_seq, late.lease_token) == (1, None)
    assert h.store.record([(late, p)], OK, jitter=0, count=3, slow=(0,)) == []
    snap = h.store.snapshot(MODEL, p)
    assert (snap.calls, snap.consecutive_failures, snap.suspect_in_flight) == (9, 0, 0)
    assert h.store.record([(lease, p)], FAIL, jitter=0) == []  # cf 1 again, no trip
    assert h.store.snapshot(MODEL, p).consecutive_failures == 1


def test_fail_seq_is_in_every_grant_and_survives_transitions(h: Harness) -> None:
    p = pol(consecutive_failures=2, minimum_calls=100, open_base_ms=100, half_open_successes=1)
    assert h.store.acquire([(MODEL, p)])[0].grants[0].fail_seq == 0
    trip(h, p)
    fs = h.store.snapshot(MODEL, p).fail_seq
    assert fs >= 2
    h.elapse(100)
    probe = h.store.acquire([(MODEL, p)])[0].grants[0]
    assert (probe.probe_token is not None, probe.fail_seq) == (True, fs)
    assert [t.to_state for t in h.store.record([(probe, p)], OK, jitter=0)] == ["closed"]
    # fast path (closed, cf 0) answers fs too, and a changed fs changes the grant
    assert h.store.acquire([(MODEL, p)])[0].grants[0].fail_seq == fs
    assert h.call(FAIL, p)[1] == []
    assert h.store.acquire([(MODEL, p)])[0].grants[0].fail_seq == fs + 1
