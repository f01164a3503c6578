"""FleetBreaker on a real Redis: decisions, exactly-once announcements, records, round trips."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from breaker_service import (
    BreakerListener,
    BreakerOpen,
    BreakerPolicy,
    EventLog,
    FleetBreaker,
    Outcome,
    OutcomeClass,
    Permit,
    Rejection,
    Scope,
    Transition,
)
from breaker_service.listeners import TransitionSource
from breaker_service.store.redis import RedisStore
from fleet.errors import ProviderError
from fleet.settings import FleetSettings
from fleet.testing import wait_until

ROOT = Path(__file__).resolve().parent.parent
PROV = Scope("prov")
MODEL = Scope("prov", "m1")
POLICY = BreakerPolicy(
    window_ms=10_000,
    minimum_calls=1_000,
    consecutive_failures=3,
    open_base_ms=100,
    open_cap_ms=1_000,
    jitter_ratio=0,
    half_open_max_probes=1,
    half_open_successes=1,
)
NO_TRIP = POLICY.merged({"consecutive_failures": 10_000})
SUSPECT = POLICY.merged({"suspect_cap": True})

FAIL = Outcome(OutcomeClass.FAILURE, latency_ms=1.0)
OK = Outcome(OutcomeClass.SUCCESS, latency_ms=1.0)


class Recorder(BreakerListener):
    """Keeps every hook call."""

    def __init__(self) -> None:
        self.transitions: list[tuple[Transition, str]] = []
        self.rejections: list[Rejection] = []

    def on_transition(self, transition: Transition, *, source: TransitionSource) -> None:
        self.transitions.append((transition, source))

    def on_reject(self, rejection: Rejection) -> None:
        self.rejections.append(rejection)


class CountingRedis(redis.Redis):
    """A real client that counts the requests each thread sends (round trips it waits on).

    Counted where bytes leave for the socket (one per command, one per pipeline), so the
    breaker's pre-packed acquire counts like any command.
    """

    by_thread: dict[int, int]

    @classmethod
    def connect(cls, url: str, **kwargs: Any) -> CountingRedis:
        by_thread: dict[int, int] = {}
        lock = threading.Lock()

        class Counting(redis.Connection):
            def send_packed_command(self, command: Any, check_health: bool = True) -> None:
                with lock:
                    tid = threading.get_ident()
                    by_thread[tid] = by_thread.get(tid, 0) + 1
                super().send_packed_command(command, check_health)  # type: ignore[no-untyped-call]

        client = cls.from_url(url, connection_class=Counting, **kwargs)
        assert isinstance(client, CountingRedis)
        client.by_thread = by_thread
        return client

    def mine(self) -> int:
        return self.by_thread.get(threading.get_ident(), 0)

    def total(self) -> int:
        return sum(self.by_thread.values())


@pytest.fixture
def client(fleet_settings: FleetSettings) -> Iterator[CountingRedis]:
    conn = CountingRedis.connect(fleet_settings.redis_url, socket_timeout=2.0)
    yield conn
    conn.close()


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def breaker(
    client: CountingRedis, fleet_settings: FleetSettings, recorder: Recorder
) -> Iterator[FleetBreaker]:
    fb = FleetBreaker(
        RedisStore(client, namespace=fleet_settings.namespace),
        lambda s: NO_TRIP if s.provider == "notrip" else POLICY,
        worker_id="t1",
        events=EventLog(client, namespace=fleet_settings.namespace),
        listeners=[recorder],
    )
    yield fb
    fb.close()


def _events(client: redis.Redis, ns: str) -> list[dict[str, str]]:
    return [
        {k.decode(): v.decode() for k, v in fields.items()}
        for _id, fields in client.xrange(f"{ns}:events")
    ]


def _trip(breaker: FleetBreaker, scopes: list[Scope]) -> None:
    for _ in range(POLICY.consecutive_failures):
        permit = breaker.acquire(scopes)
        assert isinstance(permit, Permit)
        breaker.record(permit, FAIL)


def _permit(breaker: FleetBreaker, scopes: list[Scope]) -> Permit | None:
    decision = breaker.acquire(scopes)
    return decision if isinstance(decision, Permit) else None


def test_allow_permit_holds_one_grant_per_scope(breaker: FleetBreaker) -> None:
    permit = breaker.acquire([PROV, MODEL])
    assert isinstance(permit, Permit)
    assert permit.decision == "allow"
    assert [g.scope for g in permit.grants] == [PROV, MODEL]


def test_acquire_without_scopes_names_the_fix(breaker: FleetBreaker) -> None:
    with pytest.raises(ValueError, match="at least one Scope"):
        breaker.acquire([])


def test_trip_is_announced_once_in_stream_listeners_and_log(
    breaker: FleetBreaker,
    recorder: Recorder,
    client: CountingRedis,
    fleet_settings: FleetSettings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("INFO", logger="breaker_service.breaker")
    _trip(breaker, [PROV])
    assert [(t.to_state, t.trigger, s) for t, s in recorder.transitions] == [
        ("open", "consecutive", "shared")
    ]
    events = _events(client, fleet_settings.namespace)
    assert len(events) == 1
    ev = events[0]
    assert ev["scope"] == "prov" and ev["from"] == "closed" and ev["to"] == "open"
    assert ev["trigger"] == "consecutive" and ev["worker"] == "t1"
    assert float(ev["threshold"]) == 3 and float(ev["value"]) == 3
    assert int(ev["generation"]) == recorder.transitions[0][0].generation
    lines = [r.getMessage() for r in caplog.records if "transition" in r.getMessage()]
    assert len(lines) == 1
    assert "breaker=prov" in lines[0] and "trigger=consecutive" in lines[0]
    assert "threshold=3" in lines[0] and "value=3" in lines[0]

    rejected = breaker.acquire([PROV])
    assert isinstance(rejected, Rejection)
    assert rejected.scope == "prov" and rejected.reason == "open"
    assert 0 < rejected.retry_after_s <= POLICY.open_cap_ms / 1000
    assert recorder.rejections == [rejected]


def test_probe_outcome_is_recorded_before_record_returns(
    breaker: FleetBreaker, recorder: Recorder
) -> None:
    _trip(breaker, [PROV])
    probe = wait_until(
        lambda: _permit(breaker, [PROV]),
        timeout_s=10,
        message="open period to elapse",
    )
    assert probe.decision == "probe"
    breaker.record(probe, OK)  # no flush: probes are synchronous
    assert breaker.snapshot(PROV).state == "closed"
    assert [t.to_state for t, _ in recorder.transitions] == ["open", "half_open", "closed"]
    assert [t.trigger for t, _ in recorder.transitions][1:] == ["open_elapsed", "probes_succeeded"]


def test_success_records_are_sent_in_background_and_never_lost(breaker: FleetBreaker) -> None:
    for _ in range(50):
        with breaker.protect([PROV, MODEL]):
            pass
    breaker.close()
    assert breaker.pending_records == 0
    snap = breaker.snapshot(MODEL)
    assert snap.calls == 50 and snap.failures == 0
    # closed breakers record synchronously rather than drop
    permit = breaker.acquire([PROV])
    assert isinstance(permit, Permit)
    breaker.record(permit, OK)
    assert breaker.snapshot(PROV).calls == 51


def test_protect_records_exception_classes(breaker: FleetBreaker, recorder: Recorder) -> None:
    with pytest.raises(ValueError), breaker.protect([PROV]):
        raise ValueError("boom")
    assert breaker.snapshot(PROV).failures == 1
    ignored = ProviderError("bad request", outcome="ignored", status=400)
    with pytest.raises(ProviderError), breaker.protect([PROV]):
        raise ignored
    breaker.flush()
    assert breaker.snapshot(PROV).calls == 1
    credential = ProviderError("401", outcome="credential", status=401)
    with pytest.raises(ProviderError), breaker.protect([MODEL]):
        raise credential
    assert [t.trigger for t, _ in recorder.transitions] == ["credential"]
    with pytest.raises(BreakerOpen) as info, breaker.protect([MODEL]):
        pytest.fail("a credential-open breaker must not let the call through")
    assert info.value.reason == "credential" and info.value.scope == "prov/m1"


def test_rate_limited_opens_at_least_retry_after(breaker: FleetBreaker) -> None:
    limited = ProviderError("429", outcome="rate_limited", status=429, retry_after_s=30)
    for _ in range(POLICY.consecutive_failures):
        with pytest.raises(ProviderError), breaker.protect([PROV]):
            raise limited
    rejected = breaker.acquire([PROV])
    assert isinstance(rejected, Rejection)
    assert rejected.retry_after_s > 20


def test_old_generation_outcome_does_not_change_state(breaker: FleetBreaker) -> None:
    early = breaker.acquire([PROV])
    assert isinstance(early, Permit)
    _trip(breaker, [PROV])
    probe = wait_until(
        lambda: _permit(breaker, [PROV]),
        timeout_s=10,
        message="half-open",
    )
    before = breaker.snapshot(PROV)
    assert before.state == "half_open"
    breaker.record(early, FAIL)  # started before the trip: metrics only
    after = breaker.snapshot(PROV)
    assert (after.state, after.generation) == ("half_open", before.generation)
    breaker.record(probe, FAIL)  # the current probe does reopen
    assert breaker.snapshot(PROV).state == "open"


def test_listener_errors_never_fail_the_call(
    client: CountingRedis, fleet_settings: FleetSettings
) -> None:
    class Broken(BreakerListener):
        def on_transition(self, transition: Transition, *, source: TransitionSource) -> None:
            raise RuntimeError("listener bug")

    fb = FleetBreaker(
        RedisStore(client, namespace=fleet_settings.namespace),
        lambda _s: POLICY,
        worker_id="t2",
        listeners=[Broken()],
    )
    _trip(fb, [PROV])
    assert fb.snapshot(PROV).state == "open"
    fb.close()


def test_round_trips_per_call(breaker: FleetBreaker, client: CountingRedis) -> None:
    """A successful call waits on 1 round trip (acquire), a failing call on 2."""
    with breaker.protect([PROV, MODEL]):  # warm-up: script registration
        pass
    breaker.flush()
    n = 20
    start_mine, start_total = client.mine(), client.total()
    for _ in range(n):
        with breaker.protect([PROV, MODEL]):
            pass
    ok_waited = client.mine() - start_mine
    breaker.flush()
    ok_total = client.total() - start_total
    start_mine = client.mine()
    for _ in range(n):
        with pytest.raises(ValueError), breaker.protect([Scope("notrip")]):
            raise ValueError("provider down")
    fail_waited = client.mine() - start_mine
    print(f"round trips waited per call: success={ok_waited / n} failure={fail_waited / n}")
    assert ok_waited == n  # one EVALSHA (acquire) per successful call
    # ...and their records went out in the background, coalesced (at most one per call),
    # not lost: every call is in the window
    assert n < ok_total <= 2 * n
    assert breaker.snapshot(MODEL).calls == n + 1
    assert fail_waited == 2 * n


def test_pending_records_are_flushed_at_interpreter_exit(fleet_settings: FleetSettings) -> None:
    """A process that never calls close() still delivers its queued success records."""
    code = f"""
import redis
from breaker_service import BreakerPolicy, FleetBreaker, RedisStore, Scope
client = redis.Redis.from_url({fleet_settings.redis_url!r})
fb = FleetBreaker(RedisStore(client, namespace="exit"), lambda s: BreakerPolicy(), worker_id="x")
for _ in range(30):
    with fb.protect([Scope("prov")]):
        pass
"""
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, cwd=ROOT)
    store = RedisStore(redis.Redis.from_url(fleet_settings.redis_url), namespace="exit")
    assert store.snapshot(PROV, BreakerPolicy()).calls == 30


def test_forked_child_sends_its_own_records(breaker: FleetBreaker) -> None:
    with breaker.protect([PROV]):  # the parent's sender thread is running now
        pass

    def child() -> None:
        for _ in range(10):
            with breaker.protect([PROV]):
                pass
        breaker.close(timeout_s=10)
        sys.exit(0 if breaker.pending_records == 0 else 1)

    proc = multiprocessing.get_context("fork").Process(target=child)
    proc.start()
    proc.join(60)
    assert proc.exitcode == 0
    breaker.flush()
    assert breaker.snapshot(PROV).calls == 11


def test_threads_share_one_breaker(breaker: FleetBreaker) -> None:
    def work() -> None:
        for _ in range(25):
            with breaker.protect([PROV, MODEL]):
                pass

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    breaker.close()
    assert breaker.snapshot(MODEL).calls == 200


EXPORTED = [
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
    "Rejection",
    "RedisStore",
    "Scope",
    "ScopeGrant",
    "ScopeSnapshot",
    "StoreGuard",
    "StoreUnavailable",
    "Transition",
    "classify",
]


def test_public_api_is_pinned() -> None:
    import breaker_service

    assert sorted(breaker_service.__all__) == sorted(EXPORTED)
    for name in breaker_service.__all__:
        assert getattr(breaker_service, name).__doc__, f"{name} needs a docstring"


def test_from_settings_uses_namespace_fallback_worker_and_stream(
    fleet_settings: FleetSettings,
) -> None:
    settings = FleetSettings.load(
        redis_url=fleet_settings.redis_url,
        namespace="fs",
        worker_id="host:42",
        breaker_fallback="fail_closed",
        events_maxlen=100,
    )
    client = redis.Redis.from_url(settings.redis_url)
    fb = FleetBreaker.from_settings(settings, client, lambda _s: POLICY)
    assert fb.fallback == "fail_closed" and fb.worker_id == "host:42"
    _trip(fb, [PROV])
    [(_id, fields)] = client.xrange("fs:events")
    assert fields[b"worker"] == b"host:42" and fields[b"to"] == b"open"
    assert RedisStore(client, namespace="fs").snapshot(PROV, POLICY).state == "open"
    fb.close()


def test_lease_holding_permit_is_recorded_synchronously(
    client: CountingRedis, fleet_settings: FleetSettings
) -> None:
    """A permit admitted while its scope is suspect holds a lease: its outcome (success or
    ignored) reaches the store before record() returns, never coalesced behind a linger."""
    fb = FleetBreaker(
        RedisStore(client, namespace=fleet_settings.namespace),
        lambda _s: SUSPECT,  # consecutive_failures=3, suspect cap on
        worker_id="t3",
        success_linger_ms=60_000,  # a coalesced success would wait a minute
    )
    try:
        plain = fb.acquire([PROV])
        assert isinstance(plain, Permit) and not plain.holds_lease
        fb.record(plain, FAIL)  # cf 1: suspect, 2 calls may be in flight
        held = [fb.acquire([PROV]) for _ in range(2)]
        assert all(isinstance(p, Permit) and p.decision == "allow" and p.holds_lease for p in held)
        full = fb.acquire([PROV])
        assert isinstance(full, Rejection) and full.reason == "suspect_full"
        assert 0 < full.retry_after_s <= 0.25
        first, second = (p for p in held if isinstance(p, Permit))
        fb.record(first, Outcome(OutcomeClass.IGNORED, latency_ms=1.0))
        assert fb.snapshot(PROV).suspect_in_flight == 1  # freed at once, not counted
        fb.record(second, OK)
        assert fb.pending_records == 0
        snap = fb.snapshot(PROV)
        assert (snap.consecutive_failures, snap.suspect_in_flight, snap.calls) == (0, 0, 2)
        after = fb.acquire([PROV])
        assert isinstance(after, Permit) and not after.holds_lease
    finally:
        fb.close()
