"""Redis unavailable: the breaker degrades per its fallback setting and rejoins afterwards.

A paused container is a hung Redis (socket timeouts); a dead port is a refused connection.
No RedisError or StoreUnavailable may ever reach the caller.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis

from breaker_service import (
    BreakerListener,
    BreakerOpen,
    BreakerPolicy,
    EventLog,
    FleetBreaker,
    LoggingListener,
    MemoryStore,
    Outcome,
    OutcomeClass,
    Permit,
    Rejection,
    Scope,
    StoreGuard,
    StoreUnavailable,
    Transition,
)
from breaker_service.breaker import Fallback
from breaker_service.listeners import TransitionSource
from breaker_service.store.redis import RedisStore
from fleet.redis_client import make_redis
from fleet.settings import FleetSettings
from fleet.testing import free_port, wait_until
from fleet.testing.redis_container import RedisContainer

PROV = Scope("prov")
POLICY = BreakerPolicy(
    minimum_calls=1_000, consecutive_failures=3, open_base_ms=60_000, jitter_ratio=0
)
OK = Outcome(OutcomeClass.SUCCESS, latency_ms=1.0)
FAIL = Outcome(OutcomeClass.FAILURE, latency_ms=1.0)


class Recorder(BreakerListener):
    def __init__(self) -> None:
        self.unavailable: list[str] = []
        self.recovered: list[float] = []
        self.transitions: list[tuple[Transition, str]] = []

    def on_store_unavailable(self, error: BaseException, *, fallback: str) -> None:
        self.unavailable.append(fallback)

    def on_store_recovered(self, *, degraded_s: float) -> None:
        self.recovered.append(degraded_s)

    def on_transition(self, transition: Transition, *, source: TransitionSource) -> None:
        self.transitions.append((transition, source))


def _breaker(url: str, fallback: Fallback, recorder: Recorder) -> FleetBreaker:
    settings = FleetSettings.load(redis_url=url, namespace="fb", socket_timeout_s=0.2)
    client = make_redis(settings)
    return FleetBreaker(
        RedisStore(client, namespace="fb"),
        lambda _s: POLICY,
        fallback=fallback,
        worker_id=f"w-{fallback}",
        events=EventLog(client, namespace="fb"),
        listeners=[recorder],
        guard=StoreGuard(name=fallback, fail_max=2, reset_timeout_s=0.3),
    )


def _shared(breaker: FleetBreaker) -> Permit | None:
    decision = breaker.acquire([PROV])
    if isinstance(decision, Permit) and decision.decision in ("allow", "probe"):
        breaker.record(decision, OK)
        return decision
    return None


def test_local_fallback_decides_in_process_then_rejoins(redis_container: RedisContainer) -> None:
    rec = Recorder()
    breaker = _breaker(redis_container.url, "local", rec)
    assert _shared(breaker) is not None
    breaker.flush()
    redis_container.pause()
    for _ in range(3):  # a hung Redis: local decisions, counted in the local store
        permit = breaker.acquire([PROV])
        assert isinstance(permit, Permit) and permit.decision == "degraded"
        breaker.record(permit, FAIL)
    assert rec.unavailable == ["local"]  # said once, on entering
    assert [(t.to_state, s) for t, s in rec.transitions] == [("open", "local")]
    rejected = breaker.acquire([PROV])
    assert isinstance(rejected, Rejection) and rejected.reason == "open"
    assert breaker.guard.refused > 0  # stopped waiting on Redis
    redis_container.unpause()
    wait_until(lambda: _shared(breaker), timeout_s=10, message="rejoin shared state")
    assert len(rec.recovered) == 1 and not breaker.degraded
    breaker.flush()
    snap = breaker.snapshot(PROV)  # local failures never leaked into the shared state
    assert snap.state == "closed" and snap.failures == 0
    with redis_container.client() as conn:
        kinds = [f[b"kind"] for _id, f in conn.xrange("fb:events")]
    assert kinds == [b"store_recovered"]
    breaker.close()


def test_fail_closed_rejects_with_store_unavailable(redis_container: RedisContainer) -> None:
    rec = Recorder()
    breaker = _breaker(redis_container.url, "fail_closed", rec)
    redis_container.kill()  # refused connections
    for _ in range(5):
        rejected = breaker.acquire([PROV])
        assert isinstance(rejected, Rejection)
        assert rejected.reason == "store_unavailable" and rejected.scope == "prov"
        assert 0 < rejected.retry_after_s <= 0.3
    assert rec.unavailable == ["fail_closed"]
    redis_container.restart()
    wait_until(lambda: _shared(breaker), timeout_s=10, message="rejoin after restart")
    assert len(rec.recovered) == 1
    breaker.close()


def test_fail_open_bypasses_and_keeps_local_metrics(redis_container: RedisContainer) -> None:
    rec = Recorder()
    breaker = _breaker(redis_container.url, "fail_open", rec)
    redis_container.pause()
    for _ in range(5):
        with breaker.protect([PROV]) as permit:
            assert permit.decision == "bypass"
    assert breaker.local_snapshot(PROV).calls == 5
    assert rec.unavailable == ["fail_open"]
    redis_container.unpause()
    breaker.close()


def test_background_records_fall_back_to_local_store(redis_container: RedisContainer) -> None:
    rec = Recorder()
    breaker = _breaker(redis_container.url, "local", rec)
    permit = breaker.acquire([PROV])
    assert isinstance(permit, Permit) and permit.decision == "allow"
    redis_container.pause()
    breaker.record(permit, OK)  # queued, then sent while Redis hangs
    assert breaker.flush(timeout_s=10)
    assert breaker.local_snapshot(PROV).calls == 1
    assert rec.unavailable == ["local"]
    redis_container.unpause()
    breaker.close()


def test_coalesced_successes_fall_back_to_local_store(redis_container: RedisContainer) -> None:
    """Many pending successes of one grant set (one aggregate) all land locally."""
    rec = Recorder()
    breaker = _breaker(redis_container.url, "local", rec)
    permits = [breaker.acquire([PROV]) for _ in range(25)]
    assert all(isinstance(p, Permit) and p.decision == "allow" for p in permits)
    redis_container.pause()
    for permit in permits:
        assert isinstance(permit, Permit)
        breaker.record(permit, OK)
    assert breaker.flush(timeout_s=10)
    assert breaker.pending_records == 0
    assert breaker.local_snapshot(PROV).calls == 25
    redis_container.unpause()
    breaker.close()


def test_no_redis_at_all_never_raises() -> None:
    rec = Recorder()
    breaker = _breaker(f"redis://127.0.0.1:{free_port()}/0", "local", rec)
    for _ in range(10):
        with breaker.protect([PROV, Scope("prov", "m")]) as permit:
            assert permit.decision == "degraded"
    with pytest.raises(ValueError), breaker.protect([PROV]):
        raise ValueError("provider down")
    assert breaker.degraded and rec.unavailable == ["local"]
    breaker.close()


def test_guard_opens_after_fail_max_then_lets_one_trial_through() -> None:
    guard = StoreGuard(name="g", fail_max=2, reset_timeout_s=0.2)
    calls: list[str] = []

    def down() -> None:
        calls.append("down")
        raise redis.ConnectionError("refused")

    for _ in range(2):
        with pytest.raises(StoreUnavailable, match="did not answer"):
            guard.call(down)
    assert guard.state == "open"
    with pytest.raises(StoreUnavailable, match="guard g is open"):
        guard.call(down)
    assert calls == ["down", "down"] and guard.refused == 1
    assert 0 < guard.retry_after_s() <= 0.2
    result = wait_until(
        lambda: _try(guard, lambda: "up"), timeout_s=5, message="trial after reset timeout"
    )
    assert result == "up" and guard.state == "closed"


def _try(guard: StoreGuard, fn: Callable[[], str]) -> str | None:
    try:
        return guard.call(fn)
    except StoreUnavailable:
        return None


def test_logging_listener_names_breaker_trigger_threshold_and_value(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("INFO", logger="breaker_service.listeners")
    breaker = FleetBreaker(
        MemoryStore(),
        lambda _s: POLICY,
        worker_id="w",
        listeners=[LoggingListener()],
    )
    for _ in range(3):
        with pytest.raises(ValueError), breaker.protect([PROV]):
            raise ValueError("down")
    with pytest.raises(BreakerOpen), breaker.protect([PROV]):
        pass
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "breaker=prov from=closed to=open trigger=consecutive threshold=3" in text
    assert "value=3" in text and "rejected reason=open" in text
    breaker.close()
