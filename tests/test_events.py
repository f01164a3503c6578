"""The event stream (append, read, follow, retention) and audited manual control."""

from __future__ import annotations

import threading

import pytest
import redis

from breaker_service import (
    BreakerControl,
    BreakerEvent,
    BreakerPolicy,
    EventLog,
    FleetBreaker,
    Permit,
    PolicyError,
    Rejection,
    Scope,
    StoreUnavailable,
)
from breaker_service.store.redis import RedisStore
from fleet.settings import FleetSettings
from fleet.testing import free_port

PROV = Scope("prov")
POLICY = BreakerPolicy(minimum_calls=1_000, consecutive_failures=3)


def _event(i: int) -> BreakerEvent:
    return BreakerEvent(
        kind="transition",
        scope="prov/m",
        from_state="closed",
        to_state="open",
        trigger="failure_rate",
        threshold=0.5,
        value=0.8,
        generation=i,
        worker="w1",
        at_ms=1_000 + i,
    )


@pytest.fixture
def client(fleet_settings: FleetSettings) -> redis.Redis:
    return redis.Redis.from_url(fleet_settings.redis_url, socket_timeout=2)


def test_append_and_read_round_trip_every_field(client: redis.Redis) -> None:
    log = EventLog(client, namespace="ns")
    assert log.key == "ns:events"
    entry_id = log.append(_event(7))
    [back] = log.recent(5)
    assert back == BreakerEvent(**{**_event(7).__dict__, "id": entry_id})
    raw = client.xrange("ns:events")[0][1]
    assert {k.decode() for k in raw} >= {
        "scope", "from", "to", "trigger", "threshold", "value", "generation", "worker", "at_ms",
        "actor", "reason",
    }  # fmt: skip


def test_recent_is_oldest_first_and_retention_is_bounded(client: redis.Redis) -> None:
    log = EventLog(client, namespace="ns", maxlen=100)
    for i in range(1_000):
        log.append(_event(i))
    kept = client.xlen("ns:events")
    assert 100 <= kept < 1_000  # MAXLEN ~: at least maxlen, trimmed by whole nodes
    recent = log.recent(3)
    assert [e.generation for e in recent] == [997, 998, 999]
    assert log.last_id() == recent[-1].id


def test_follow_yields_events_appended_later(client: redis.Redis) -> None:
    log = EventLog(client, namespace="ns")
    log.append(_event(1))  # before following: not yielded
    seen: list[int] = []
    done = threading.Event()
    after = log.last_id()  # follow from here: event 1 is history

    def reader() -> None:
        for event in log.follow(after=after, block_ms=50, stop=done.is_set):
            seen.append(event.generation)
            if len(seen) == 2:
                return

    thread = threading.Thread(target=reader)
    thread.start()
    log.append(_event(2))
    log.append(_event(3))
    thread.join(10)
    done.set()
    assert seen == [2, 3]


def test_unreachable_redis_is_store_unavailable() -> None:
    dead = redis.Redis(port=free_port(), socket_connect_timeout=0.2)
    log = EventLog(dead, namespace="ns")
    with pytest.raises(StoreUnavailable):
        log.append(_event(1))
    with pytest.raises(StoreUnavailable):
        log.recent()


def test_maxlen_must_be_positive(client: redis.Redis) -> None:
    with pytest.raises(ValueError, match="FLEET_EVENTS_MAXLEN"):
        EventLog(client, namespace="ns", maxlen=0)


@pytest.fixture
def control_and_breaker(
    client: redis.Redis, fleet_settings: FleetSettings
) -> tuple[BreakerControl, FleetBreaker, EventLog]:
    ns = fleet_settings.namespace
    events = EventLog(client, namespace=ns)
    store = RedisStore(client, namespace=ns)
    control = BreakerControl(store, events, lambda _s: POLICY, worker_id="cli")
    breaker = FleetBreaker(
        RedisStore(client, namespace=ns), lambda _s: POLICY, worker_id="w", events=events
    )
    return control, breaker, events


def test_force_open_is_fleet_wide_audited_and_does_not_expire(
    control_and_breaker: tuple[BreakerControl, FleetBreaker, EventLog],
) -> None:
    control, breaker, events = control_and_breaker
    t = control.force_open(PROV, reason="provider incident 42", actor="alice")
    assert (t.from_state, t.to_state, t.trigger) == ("closed", "forced_open", "manual")
    rejected = breaker.acquire([PROV])
    assert isinstance(rejected, Rejection) and rejected.reason == "forced_open"
    assert breaker.snapshot(PROV).open_until_ms is None  # no expiry
    [audit] = events.recent()
    assert (audit.actor, audit.reason, audit.worker) == ("alice", "provider incident 42", "cli")
    assert (audit.to_state, audit.trigger) == ("forced_open", "manual")
    control.reset(PROV, reason="incident over", actor="alice")
    assert isinstance(breaker.acquire([PROV]), Permit)
    assert [e.to_state for e in events.recent()] == ["forced_open", "closed"]
    breaker.close()


def test_force_closed_and_disable_allow_and_record(
    control_and_breaker: tuple[BreakerControl, FleetBreaker, EventLog],
) -> None:
    control, breaker, _events = control_and_breaker
    for action in (control.force_closed, control.disable):
        action(PROV, reason="testing", actor="bob")
        for _ in range(5):
            with pytest.raises(ValueError), breaker.protect([PROV]):
                raise ValueError("down")
        snap = breaker.snapshot(PROV)
        assert snap.state in ("forced_closed", "disabled") and snap.failures >= 5
    breaker.close()


def test_control_requires_a_reason(
    control_and_breaker: tuple[BreakerControl, FleetBreaker, EventLog],
) -> None:
    control, breaker, events = control_and_breaker
    with pytest.raises(PolicyError, match="reason is required"):
        control.force_open(PROV, reason="  ")
    assert events.recent() == []
    assert breaker.snapshot(PROV).state == "closed"
    breaker.close()
