"""FleetBreaker's background successes on a real Redis: coalesced per grant set, flushed on
demand, never overtaking a later failure, slow calls judged per scope."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from breaker_service import (
    BreakerListener,
    BreakerPolicy,
    FleetBreaker,
    Outcome,
    OutcomeClass,
    Permit,
    Scope,
    Transition,
)
from breaker_service.listeners import TransitionSource
from breaker_service.store.redis import RedisStore
from fleet.settings import FleetSettings
from fleet.testing import wait_until

PROV = Scope("prov")
MODEL = Scope("prov", "m1")
POLICY = BreakerPolicy(
    window_ms=60_000,
    minimum_calls=1_000,
    consecutive_failures=3,
    open_base_ms=60_000,
    jitter_ratio=0,
    suspect_cap=True,
)
FAIL = Outcome(OutcomeClass.FAILURE, latency_ms=1.0)
OK = Outcome(OutcomeClass.SUCCESS, latency_ms=10.0)
HELD_MS = 600_000.0  # a linger no test waits out: only flush/close/a failure send successes


class EvalCounter(redis.Redis):
    """A real client that counts the script calls written to its sockets (pipelined or not,
    pre-packed or not)."""

    scripts_sent: list[int]

    @classmethod
    def connect(cls, url: str, **kwargs: Any) -> EvalCounter:
        sent = [0]
        lock = threading.Lock()

        class Counting(redis.Connection):
            def send_packed_command(self, command: Any, check_health: bool = True) -> None:
                chunks = [command] if isinstance(command, bytes | str) else list(command)
                wire = b"".join(c.encode() if isinstance(c, str) else bytes(c) for c in chunks)
                with lock:
                    sent[0] += wire.upper().count(b"\r\nEVALSHA\r\n")
                super().send_packed_command(chunks, check_health)  # type: ignore[no-untyped-call]

        client = cls.from_url(url, connection_class=Counting, **kwargs)
        assert isinstance(client, EvalCounter)
        client.scripts_sent = sent
        return client


class Transitions(BreakerListener):
    def __init__(self) -> None:
        self.seen: list[Transition] = []

    def on_transition(self, transition: Transition, *, source: TransitionSource) -> None:
        self.seen.append(transition)


@pytest.fixture
def client(fleet_settings: FleetSettings) -> Iterator[EvalCounter]:
    conn = EvalCounter.connect(fleet_settings.redis_url, socket_timeout=5.0)
    yield conn
    conn.close()


@pytest.fixture
def seen() -> Transitions:
    return Transitions()


@pytest.fixture
def breaker(
    client: EvalCounter, fleet_settings: FleetSettings, seen: Transitions
) -> Iterator[FleetBreaker]:
    fb = FleetBreaker(
        RedisStore(client, namespace=fleet_settings.namespace),
        lambda s: POLICY.merged({"slow_call_ms": 5}) if s == PROV else POLICY,
        worker_id="c1",
        listeners=[seen],
        success_linger_ms=HELD_MS,
    )
    yield fb
    fb.close()


def _allow(breaker: FleetBreaker, scopes: list[Scope]) -> Permit:
    permit = breaker.acquire(scopes)
    assert isinstance(permit, Permit) and permit.decision == "allow"
    return permit


def test_successes_of_one_grant_set_travel_as_one_record(
    breaker: FleetBreaker, client: EvalCounter
) -> None:
    breaker.record(_allow(breaker, [Scope("warm")]), FAIL)  # loads record.lua
    for _ in range(100):
        with breaker.protect([PROV, MODEL]):
            pass
    assert breaker.pending_records == 100
    before = client.scripts_sent[0]
    assert breaker.flush(timeout_s=30)  # cuts the linger short
    assert client.scripts_sent[0] - before == 1  # one record.lua call for 100 calls
    assert breaker.pending_records == 0
    assert breaker.snapshot(PROV).calls == 100 and breaker.snapshot(MODEL).calls == 100


def test_distinct_grant_sets_stay_apart(breaker: FleetBreaker) -> None:
    for _ in range(3):
        breaker.record(_allow(breaker, [PROV, MODEL]), OK)
        breaker.record(_allow(breaker, [MODEL]), OK)
    assert breaker.pending_records == 6
    assert breaker.flush(timeout_s=30)
    assert breaker.snapshot(PROV).calls == 3 and breaker.snapshot(MODEL).calls == 6


def test_successes_admitted_before_and_after_a_failure_are_not_merged(
    client: EvalCounter, fleet_settings: FleetSettings
) -> None:
    """The grant's fail_seq is part of the coalescing key: a batch admitted before a failure
    stays stale (keeps the consecutive counter), one admitted after it resets the counter."""
    policy = POLICY.merged({"suspect_cap": False})  # lease-free permits after the failure too
    fb = FleetBreaker(
        RedisStore(client, namespace=fleet_settings.namespace),
        lambda s: policy,
        worker_id="c2",
        success_linger_ms=HELD_MS,
    )
    try:
        early = [_allow(fb, [MODEL]) for _ in range(3)]
        fb.record(early[0], FAIL)  # cf 1
        fb.record(early[1], OK)
        assert fb.flush(timeout_s=30)
        assert fb.snapshot(MODEL).consecutive_failures == 1  # stale: counted, cf kept
        fb.record(early[2], OK)  # stale again
        late = _allow(fb, [MODEL])
        assert late.grants[0].fail_seq == early[2].grants[0].fail_seq + 1
        fb.record(late, OK)
        assert fb.pending_records == 2
        before = client.scripts_sent[0]
        assert fb.flush(timeout_s=30)
        assert client.scripts_sent[0] - before == 2  # two grant sets: never merged
        snap = fb.snapshot(MODEL)
        assert (snap.calls, snap.failures, snap.consecutive_failures) == (4, 1, 0)
    finally:
        fb.close()


def test_failure_is_not_overtaken_by_pending_successes(
    breaker: FleetBreaker, seen: Transitions
) -> None:
    """f, f, s, f: the success (still pending) lands before the last failure, so the
    consecutive counter reads 1 and nothing trips (f, f, f would trip at 3)."""
    for outcome in (FAIL, FAIL, OK, FAIL):
        breaker.record(_allow(breaker, [PROV]), outcome)
    assert breaker.pending_records == 0  # the failure took the pending success with it
    snap = breaker.snapshot(PROV)
    assert (snap.state, snap.calls, snap.failures, snap.consecutive_failures) == (
        "closed",
        4,
        3,
        1,
    )
    assert seen.seen == []


def test_failure_takes_only_successes_of_its_scopes(breaker: FleetBreaker) -> None:
    breaker.record(_allow(breaker, [MODEL]), OK)
    breaker.record(_allow(breaker, [Scope("other")]), OK)
    breaker.record(_allow(breaker, [PROV, MODEL]), FAIL)
    assert breaker.pending_records == 1  # the other provider's success still waits
    assert breaker.snapshot(MODEL).calls == 2
    assert breaker.flush(timeout_s=30)
    assert breaker.snapshot(Scope("other")).calls == 1


def test_slow_successes_are_judged_per_scope_policy(breaker: FleetBreaker) -> None:
    for _ in range(7):  # 10 ms: slow for PROV (slow_call_ms=5), not for MODEL (1000)
        breaker.record(_allow(breaker, [PROV, MODEL]), OK)
    breaker.record(_allow(breaker, [PROV, MODEL]), Outcome(OutcomeClass.SUCCESS, 1.0))
    assert breaker.flush(timeout_s=30)
    prov, model = breaker.snapshot(PROV), breaker.snapshot(MODEL)
    assert (prov.calls, prov.slow_calls, model.calls, model.slow_calls) == (8, 7, 8, 0)


def test_ignored_outcome_of_an_allow_permit_sends_nothing(
    breaker: FleetBreaker, client: EvalCounter
) -> None:
    permit = _allow(breaker, [PROV])
    before = client.scripts_sent[0]
    breaker.record(permit, Outcome(OutcomeClass.IGNORED, 1.0, status=400))
    assert client.scripts_sent[0] == before and breaker.pending_records == 0
    assert breaker.snapshot(PROV).calls == 0


def test_close_sends_pending_successes_then_records_synchronously(
    breaker: FleetBreaker,
) -> None:
    for _ in range(5):
        breaker.record(_allow(breaker, [PROV]), OK)
    breaker.close(timeout_s=30)
    assert breaker.pending_records == 0 and breaker.snapshot(PROV).calls == 5
    breaker.record(_allow(breaker, [PROV]), OK)  # after close: no background thread
    assert breaker.snapshot(PROV).calls == 6


def test_queue_bound_counts_grant_sets_and_overflow_records_synchronously(
    client: EvalCounter, fleet_settings: FleetSettings
) -> None:
    fb = FleetBreaker(
        RedisStore(client, namespace=fleet_settings.namespace),
        lambda _s: POLICY,
        worker_id="c2",
        queue_max=1,
        success_linger_ms=HELD_MS,
    )
    try:
        for _ in range(4):
            fb.record(_allow(fb, [PROV]), OK)  # one grant set: merges, never full
        fb.record(_allow(fb, [MODEL]), OK)  # a second grant set: sent at once
        assert fb.pending_records == 4
        assert fb.snapshot(MODEL).calls == 1 and fb.snapshot(PROV).calls == 0
    finally:
        fb.close(timeout_s=30)
    assert fb.snapshot(PROV).calls == 4


def test_linger_zero_and_negative(client: EvalCounter, fleet_settings: FleetSettings) -> None:
    store = RedisStore(client, namespace=fleet_settings.namespace)
    with pytest.raises(ValueError, match="success_linger_ms"):
        FleetBreaker(store, lambda _s: POLICY, worker_id="c3", success_linger_ms=-1)
    fb = FleetBreaker(store, lambda _s: POLICY, worker_id="c3", success_linger_ms=0)
    try:
        fb.record(_allow(fb, [PROV]), OK)
        assert fb.flush(timeout_s=30)
        assert fb.snapshot(PROV).calls == 1
    finally:
        fb.close()


def test_take_waits_for_an_in_flight_flush_of_its_scopes() -> None:
    """A synchronous record must land after an in-flight flush of the same scopes."""
    from breaker_service.sender import RecordSender
    from breaker_service.store.base import RecordItem, ScopeGrant

    release, sending = threading.Event(), threading.Event()
    order: list[str] = []

    def send(items: list[RecordItem]) -> None:
        sending.set()
        assert release.wait(30)
        order.append(f"sent {sum(i.count for i in items)}")

    sender = RecordSender(send, lambda gs: [(g, POLICY) for g in gs], maxsize=10, linger_s=0)
    grants = (ScopeGrant(PROV, 0),)
    assert sender.add(grants, 1.0)
    assert sending.wait(30)  # the flush is in flight and blocked
    assert sender.add(grants, 1.0)  # merges into the next aggregate

    def failing_call() -> None:
        items = sender.take([PROV])
        order.append(f"taken {sum(i.count for i in items)}")

    caller = threading.Thread(target=failing_call)
    caller.start()
    wait_until(lambda: len(sender._cond._waiters) == 1, timeout_s=30, message="take waiting")  # type: ignore[attr-defined]
    release.set()
    caller.join(30)
    # the caller's take came after the in-flight send (the background thread may have sent
    # the second success too, before the caller got the lock): nothing lost, nothing doubled
    assert order[0] == "sent 1" and order[-1].startswith("taken ")
    assert sum(int(entry.split()[1]) for entry in order) == 2
    assert sender.close(timeout_s=30) and sender.pending == 0


def test_take_from_inside_a_send_does_not_wait_for_itself() -> None:
    """A listener that records a failure while the sender thread is sending (e.g. reacting to
    a transition) must not wait for the very send it runs in."""
    from breaker_service.sender import RecordSender
    from breaker_service.store.base import RecordItem, ScopeGrant

    taken: list[int] = []
    sender: RecordSender

    def send(items: list[RecordItem]) -> None:
        taken.append(len(sender.take([PROV], timeout_s=600)))

    sender = RecordSender(send, lambda gs: [(g, POLICY) for g in gs], maxsize=10, linger_s=0)
    assert sender.add((ScopeGrant(PROV, 0),), 1.0)
    assert sender.flush(timeout_s=30)
    assert taken == [0]
    sender.close(timeout_s=30)
