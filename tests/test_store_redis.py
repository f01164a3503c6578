"""RedisStore-only properties: one round trip per step, key layout, expiry, bounded state,
script reloading, and Redis errors surfacing as StoreUnavailable (paused and killed servers).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any, cast

import pytest
import redis
from redis.crc import key_slot

from breaker_service.errors import PolicyError, StoreUnavailable
from breaker_service.outcomes import Outcome, OutcomeClass
from breaker_service.policy import BreakerPolicy
from breaker_service.scope import Scope
from breaker_service.store import ControlAction, MemoryStore, RecordItem, ScopeGrant
from breaker_service.store.redis import RedisStore
from fleet.testing import wait_until
from fleet.testing.redis_container import RedisContainer

PROVIDER = Scope("sambanova")
MODEL = Scope("sambanova", "llama-70b")
FAIL = Outcome(OutcomeClass.FAILURE, latency_ms=5)
OK = Outcome(OutcomeClass.SUCCESS, latency_ms=5)
POLICY = BreakerPolicy(
    window_ms=2_000,
    buckets=10,
    minimum_calls=10**6,
    consecutive_failures=10**6,
    open_base_ms=5_000,
    open_cap_ms=60_000,
    jitter_ratio=0.0,
)


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    """A bytes client on the shared, flushed test Redis."""
    conn = redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
    yield conn
    conn.close()


@pytest.fixture
def store(client: redis.Redis) -> RedisStore:
    """A RedisStore in namespace ``test``."""
    return RedisStore(client, namespace="test")


class CountingConnection(redis.Connection):
    """A real connection that counts the requests it sends (one per round trip)."""

    sent = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        type(self).sent += 1
        super().send_packed_command(command, check_health)  # type: ignore[no-untyped-call]


def test_one_round_trip_per_acquire_and_per_record(redis_url: str) -> None:
    pool = redis.ConnectionPool.from_url(redis_url, connection_class=CountingConnection)
    conn = redis.Redis(connection_pool=pool)
    try:
        store = RedisStore(conn, namespace="test")
        scopes = [(PROVIDER, POLICY), (MODEL, POLICY), (Scope("sambanova", "x"), POLICY)]
        res, _ = store.acquire(scopes)  # loads the scripts (EVALSHA, SCRIPT LOAD, EVALSHA)
        store.record([(g, POLICY) for g in res.grants], FAIL, jitter=0.3)
        conn.config_resetstat()
        CountingConnection.sent = 0
        res, _ = store.acquire(scopes)
        assert CountingConnection.sent == 1
        store.record([(g, POLICY) for g in res.grants], FAIL, jitter=0.3)
        assert CountingConnection.sent == 2
        info = cast(dict[str, Any], conn.info("commandstats"))
        assert info["cmdstat_evalsha"]["calls"] == 2
    finally:
        conn.close()
        pool.disconnect()


def test_record_many_is_one_round_trip_in_order(redis_url: str) -> None:
    """A failing call's record and the pending successes before it share one round trip."""
    pool = redis.ConnectionPool.from_url(redis_url, connection_class=CountingConnection)
    conn = redis.Redis(connection_pool=pool)
    try:
        store = RedisStore(conn, namespace="test")
        res, _ = store.acquire([(PROVIDER, POLICY), (MODEL, POLICY)])
        pairs = tuple((g, POLICY) for g in res.grants)
        store.record(pairs, OK, jitter=0)  # loads record.lua
        CountingConnection.sent = 0
        items = [RecordItem(pairs, OK, count=40, slow=(0, 0)), RecordItem(pairs, FAIL)]
        assert store.record_many(items, jitter=0.5) == []
        assert CountingConnection.sent == 1
        snap = store.snapshot(MODEL, POLICY)
        assert (snap.calls, snap.failures, snap.consecutive_failures) == (42, 1, 1)
    finally:
        conn.close()
        pool.disconnect()


def test_record_many_reloads_scripts_after_script_flush(
    client: redis.Redis, store: RedisStore
) -> None:
    res, _ = store.acquire([(MODEL, POLICY)])
    pairs = ((res.grants[0], POLICY),)
    client.script_flush()
    items = [RecordItem(pairs, OK, count=3), RecordItem(pairs, FAIL)]
    assert store.record_many(items, jitter=0) == []
    assert store.snapshot(MODEL, POLICY).calls == 4


def test_keys_share_the_provider_hash_tag(store: RedisStore) -> None:
    keys = [store.key(PROVIDER), store.key(MODEL), store.key(Scope("sambanova", "llama-8b"))]
    assert keys[:2] == ["test:cb:{sambanova}:p", "test:cb:{sambanova}:m:llama-70b"]
    assert len({key_slot(k.encode()) for k in keys}) == 1
    assert key_slot(store.key(Scope("openai")).encode()) != key_slot(keys[0].encode())


def test_every_write_sets_pexpire(client: redis.Redis, store: RedisStore) -> None:
    res, _ = store.acquire([(PROVIDER, POLICY), (MODEL, POLICY)])
    store.record([(g, POLICY) for g in res.grants], OK, jitter=0)
    for scope in (PROVIDER, MODEL):
        ttl = cast(int, client.pttl(store.key(scope)))
        assert 0 < ttl <= POLICY.ttl_ms()


def test_sticky_states_do_not_expire(client: redis.Redis, store: RedisStore) -> None:
    store.control(MODEL, POLICY, "force_open")
    assert client.pttl(store.key(MODEL)) == -1
    store.control(MODEL, POLICY, "reset")
    assert 0 < cast(int, client.pttl(store.key(MODEL))) <= POLICY.ttl_ms()
    res, _ = store.acquire([(MODEL, POLICY)])
    (tr,) = store.record([(res.grants[0], POLICY)], Outcome(OutcomeClass.CREDENTIAL), jitter=0)
    assert tr.trigger == "credential"
    assert client.pttl(store.key(MODEL)) == -1


def test_state_stays_constant_size_over_10k_records(client: redis.Redis, store: RedisStore) -> None:
    key = store.key(MODEL)
    grant = ScopeGrant(MODEL, 0, None)
    max_fields = 0
    pipe_every = 500
    for i in range(10_000):
        store.record([(grant, POLICY)], FAIL if i % 4 else OK, jitter=0)
        if i % pipe_every == 0:
            max_fields = max(max_fields, cast(int, client.hlen(key)))
    max_fields = max(max_fields, cast(int, client.hlen(key)))
    assert max_fields <= 17 + 3 * POLICY.buckets
    snap = store.snapshot(MODEL, POLICY)
    assert 0 < snap.calls <= 10_000
    assert snap.failures <= snap.calls


def test_scripts_reload_after_script_flush(client: redis.Redis, store: RedisStore) -> None:
    assert store.acquire([(MODEL, POLICY)])[0].allowed
    client.script_flush()
    res, _ = store.acquire([(MODEL, POLICY)])
    assert res.allowed
    assert store.record([(res.grants[0], POLICY)], OK, jitter=0) == []
    assert store.control(MODEL, POLICY, "disable").to_state == "disabled"


def test_works_with_a_decoding_client(redis_url: str) -> None:
    conn = redis.Redis.from_url(redis_url, decode_responses=True, socket_timeout=5)
    try:
        store = RedisStore(conn, namespace="dec")
        store.control(MODEL, POLICY, "force_open")
        res, _ = store.acquire([(PROVIDER, POLICY), (MODEL, POLICY)])
        assert (res.rejected_scope, res.reason) == (MODEL, "forced_open")
        assert store.scopes() == [MODEL]
        assert store.snapshot(MODEL, POLICY).state == "forced_open"
    finally:
        conn.close()


def test_scopes_lists_only_this_namespace(client: redis.Redis, store: RedisStore) -> None:
    other = RedisStore(client, namespace="other")
    res, _ = store.acquire([(PROVIDER, POLICY), (MODEL, POLICY)])
    store.record([(g, POLICY) for g in res.grants], OK, jitter=0)
    other.control(Scope("openai"), POLICY, "force_open")
    client.set("test:cb:garbage", "1")
    assert store.scopes() == [PROVIDER, MODEL]
    assert other.scopes() == [Scope("openai")]


@pytest.mark.parametrize("namespace", ["", "a{b}", "with space", "star*"])
def test_bad_namespace_is_refused(client: redis.Redis, namespace: str) -> None:
    with pytest.raises(PolicyError, match="namespace"):
        RedisStore(client, namespace=namespace)


def _exercise(store: RedisStore) -> None:
    """Every store method must raise StoreUnavailable (never a RedisError, never 'healthy')."""
    grant = ScopeGrant(MODEL, 0, None)
    calls = [
        lambda: store.acquire([(MODEL, POLICY)]),
        lambda: store.record([(grant, POLICY)], FAIL, jitter=0),
        lambda: store.control(MODEL, POLICY, "reset"),
        lambda: store.snapshot(MODEL, POLICY),
        store.scopes,
        store.ping,
    ]
    for call in calls:
        with pytest.raises(StoreUnavailable) as info:
            call()
        assert isinstance(info.value.__cause__, redis.RedisError)


def test_paused_redis_raises_store_unavailable(redis_container: RedisContainer) -> None:
    conn = redis_container.client(socket_timeout=0.3, socket_connect_timeout=0.3)
    store = RedisStore(conn, namespace="test")
    assert store.acquire([(MODEL, POLICY)])[0].allowed
    redis_container.pause()
    try:
        _exercise(store)
    finally:
        redis_container.unpause()
    store.ping()  # rejoins once Redis answers
    assert store.acquire([(MODEL, POLICY)])[0].allowed
    conn.close()


def test_killed_redis_raises_store_unavailable(redis_container: RedisContainer) -> None:
    conn = redis_container.client(socket_timeout=0.3, socket_connect_timeout=0.3)
    store = RedisStore(conn, namespace="test")
    store.control(MODEL, POLICY, "force_open")
    redis_container.kill()
    _exercise(store)
    redis_container.restart()
    store.ping()
    res, _ = store.acquire([(MODEL, POLICY)])
    assert res.reason == "forced_open"  # state survived the restart (AOF)
    conn.close()


def test_long_retry_after_outlives_the_key_ttl(client: redis.Redis, store: RedisStore) -> None:
    p = BreakerPolicy(consecutive_failures=1, open_base_ms=1_000, open_cap_ms=1_000)
    limited = Outcome(OutcomeClass.RATE_LIMITED, status=429, retry_after_ms=3_600_000)
    res, _ = store.acquire([(MODEL, p)])
    (tr,) = store.record([(res.grants[0], p)], limited, jitter=0)
    assert tr.open_until_ms is not None
    assert tr.open_until_ms - tr.at_ms == 3_600_000
    assert cast(int, client.pttl(store.key(MODEL))) > 3_600_000 > p.ttl_ms()


def _redis_ms(client: redis.Redis) -> int:
    sec, usec = cast(tuple[int, int], client.time())
    return int(sec) * 1000 + int(usec) // 1000


def _let_redis_time_pass(client: redis.Redis, ms: int) -> None:
    end = _redis_ms(client) + ms
    wait_until(lambda: _redis_ms(client) >= end, interval_s=0.005, message=f"{ms} ms of TIME")


def _norm_tr(tr: Any) -> tuple[Any, ...]:
    # the measured open time of open_elapsed depends on each store's clock: compared apart
    value = None if tr.trigger == "open_elapsed" else tr.value
    span = None if tr.open_until_ms is None else tr.open_until_ms - tr.at_ms
    return (
        tr.scope,
        tr.from_state,
        tr.to_state,
        tr.trigger,
        tr.threshold,
        value,
        tr.generation,
        span,
    )


def _norm_snap(s: Any) -> tuple[Any, ...]:
    return (
        s.state,
        s.generation,
        s.trips,
        s.calls,
        s.failures,
        s.slow_calls,
        s.consecutive_failures,
        s.probes_in_flight,
        s.probe_successes,
    )


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_redis_and_memory_stores_agree_step_by_step(client: redis.Redis, seed: int) -> None:
    """A random run of acquires, records (old generations included) and controls gives the
    same decisions, transitions and snapshots on both stores."""
    rng = random.Random(seed)
    p = BreakerPolicy(
        window_ms=60_000,
        buckets=10,
        minimum_calls=4,
        failure_rate_threshold=0.5,
        consecutive_failures=3,
        slow_call_ms=1_000,
        slow_call_rate_threshold=0.8,
        half_open_max_probes=2,
        half_open_successes=2,
        probe_lease_ms=60_000,
        open_base_ms=10,
        open_cap_ms=20,
        jitter_ratio=0.0,
    )
    clock = [1_000_000]
    mem = MemoryStore(clock_ms=lambda: clock[0])
    red = RedisStore(client, namespace=f"diff{seed}")
    scopes = [(PROVIDER, p), (MODEL, p)]
    held: list[tuple[tuple[ScopeGrant, ...], tuple[ScopeGrant, ...]]] = []
    outcomes = [
        Outcome(OutcomeClass.SUCCESS, latency_ms=10),
        Outcome(OutcomeClass.SUCCESS, latency_ms=2_000),
        Outcome(OutcomeClass.FAILURE, latency_ms=10),
        Outcome(OutcomeClass.RATE_LIMITED, retry_after_ms=15),
        Outcome(OutcomeClass.IGNORED),
    ]
    triggers: set[str] = set()
    for step in range(120):
        roll = rng.random()
        if roll < 0.45:
            # let every open period (<= cap 20 ms) elapse on both clocks
            clock[0] += 25
            _let_redis_time_pass(client, 25)
            pick = scopes if rng.random() < 0.7 else scopes[1:]
            (rm, tm), (rr, tr_) = mem.acquire(pick), red.acquire(pick)
            assert (rm.allowed, rm.rejected_scope, rm.reason) == (
                rr.allowed,
                rr.rejected_scope,
                rr.reason,
            ), step
            assert [(g.scope, g.generation, g.probe_token is None) for g in rm.grants] == [
                (g.scope, g.generation, g.probe_token is None) for g in rr.grants
            ], step
            assert list(map(_norm_tr, tm)) == list(map(_norm_tr, tr_)), step
            triggers.update(t.trigger for t in tm)
            if rm.allowed:
                held.append((rm.grants, rr.grants))
        elif roll < 0.95 and held:
            gm, gr = held.pop(rng.randrange(len(held)))
            outcome = rng.choice(outcomes)
            jitter = rng.random()
            tm = mem.record([(g, p) for g in gm], outcome, jitter=jitter)
            tr_ = red.record([(g, p) for g in gr], outcome, jitter=jitter)
            assert list(map(_norm_tr, tm)) == list(map(_norm_tr, tr_)), step
            triggers.update(t.trigger for t in tm)
        elif roll >= 0.95:
            actions: list[ControlAction] = ["reset", "force_closed", "disable", "force_open"]
            action = rng.choice(actions)
            assert _norm_tr(mem.control(MODEL, p, action)) == _norm_tr(
                red.control(MODEL, p, action)
            )
            if action != "reset" and rng.random() < 0.7:
                mem.control(MODEL, p, "reset")
                red.control(MODEL, p, "reset")
        for scope, _ in scopes:
            assert _norm_snap(mem.snapshot(scope, p)) == _norm_snap(red.snapshot(scope, p)), step
    assert mem.scopes() == red.scopes()
    # the run really went through trips and half-open periods (seeds 1 and 3 also close)
    assert {"failure_rate", "open_elapsed", "probe_failed"} <= triggers


def test_acquire_on_closed_scopes_writes_nothing(client: redis.Redis, store: RedisStore) -> None:
    res, _ = store.acquire([(PROVIDER, POLICY), (MODEL, POLICY)])
    assert res.allowed
    assert client.exists(store.key(PROVIDER), store.key(MODEL)) == 0
    assert store.scopes() == []


def test_acquire_rides_over_a_redis_restart(redis_container: RedisContainer) -> None:
    """A pooled connection gone stale in a restart (and the script cache lost with it) costs
    the next acquire a reconnect and a SCRIPT LOAD, not a StoreUnavailable (acquire sends a
    pre-packed command on a pooled connection, outside redis-py's command path)."""
    conn = redis_container.client(socket_timeout=2, socket_connect_timeout=2)
    store = RedisStore(conn, namespace="test")
    assert store.acquire([(MODEL, POLICY)])[0].allowed  # leaves one pooled connection
    redis_container.kill()
    redis_container.restart()
    wait_until(lambda: _answers(redis_container), timeout_s=30, message="redis back")
    # the restarted server has no script cache: acquire reconnects, then loads its script
    res, _ = store.acquire([(MODEL, POLICY)])
    assert res.allowed
    conn.close()


def _answers(container: RedisContainer) -> bool:
    probe = container.client(socket_timeout=0.5, socket_connect_timeout=0.5)
    try:
        return bool(probe.ping())
    except redis.RedisError:
        return False
    finally:
        probe.close()


def test_acquire_follows_the_policy_passed_each_call(store: RedisStore) -> None:
    """Acquire commands are packed once per scope set and policy; a policy built afresh per
    call (equal or not) is honoured, and the caches stay bounded."""
    one = POLICY.merged({"consecutive_failures": 1, "open_base_ms": 1_000})
    res, _ = store.acquire([(MODEL, one)])
    store.record([(res.grants[0], one)], FAIL, jitter=0)  # trips
    wait_until(
        lambda: store.acquire([(MODEL, one.merged({"jitter_ratio": 0.0}))])[0].allowed,
        timeout_s=30,
        message="half-open probe",
    )
    # one lease is held: max 1 probe rejects, a policy allowing 2 lets a second probe in
    full, _ = store.acquire([(MODEL, one.merged({"half_open_max_probes": 1}))])
    assert (full.allowed, full.reason) == (False, "half_open_full")
    second, _ = store.acquire([(MODEL, one.merged({"half_open_max_probes": 2}))])
    assert second.allowed and second.grants[0].probe_token
    for _ in range(1_500):  # equal policies, new objects: bounded caches, one packed command
        store.acquire([(PROVIDER, POLICY.merged({"buckets": 20}))])
    assert len(store._acquire_by_id) <= 1024
    assert sum(1 for names, _ in store._acquire_by_value if names == (PROVIDER,)) == 1


@pytest.mark.parametrize("seed", [4, 5])
def test_redis_and_memory_agree_on_aggregates_and_batches(client: redis.Redis, seed: int) -> None:
    """Random batches (coalesced successes of held grants, then one single outcome) give the
    same transitions and snapshots on both stores, slow-call trips included."""
    rng = random.Random(seed)
    p = BreakerPolicy(
        window_ms=60_000,
        minimum_calls=5,
        failure_rate_threshold=0.6,
        consecutive_failures=3,
        slow_call_ms=1_000,
        slow_call_rate_threshold=0.5,
        half_open_max_probes=2,
        half_open_successes=2,
        open_base_ms=10,
        open_cap_ms=20,
        jitter_ratio=0.0,
    )
    clock = [1_000_000]
    mem = MemoryStore(clock_ms=lambda: clock[0])
    red = RedisStore(client, namespace=f"agg{seed}")
    scopes = [(PROVIDER, p), (MODEL, p)]
    singles = [
        Outcome(OutcomeClass.SUCCESS, latency_ms=10),
        Outcome(OutcomeClass.FAILURE, latency_ms=10),
        Outcome(OutcomeClass.IGNORED),
    ]
    triggers: set[str] = set()
    for step in range(80):
        clock[0] += 25
        _let_redis_time_pass(client, 25)
        (rm, tm), (rr, tr_) = mem.acquire(scopes), red.acquire(scopes)
        assert (rm.allowed, rm.reason) == (rr.allowed, rr.reason), step
        assert list(map(_norm_tr, tm)) == list(map(_norm_tr, tr_)), step
        triggers.update(t.trigger for t in tm)
        if not rm.allowed:
            continue
        slow = rng.randint(0, 6)
        n = rng.randint(0 if slow else 1, 4)
        batches = []
        for grants in (rm.grants, rr.grants):
            plain = tuple((ScopeGrant(g.scope, g.generation), p) for g in grants)
            items = [RecordItem(plain, OK, count=n + slow, slow=(slow, slow))]
            items.append(RecordItem(tuple((g, p) for g in grants), rng.choice(singles)))
            batches.append(items)
        outcome = rng.choice(singles)
        batches[0][-1] = RecordItem(batches[0][-1].grants, outcome)
        batches[1][-1] = RecordItem(batches[1][-1].grants, outcome)
        tm = mem.record_many(batches[0], jitter=0.5)
        tr_ = red.record_many(batches[1], jitter=0.5)
        assert list(map(_norm_tr, tm)) == list(map(_norm_tr, tr_)), step
        triggers.update(t.trigger for t in tm)
        for scope, _ in scopes:
            assert _norm_snap(mem.snapshot(scope, p)) == _norm_snap(red.snapshot(scope, p)), step
    # aggregates really tripped the breaker, and half-open periods came and went
    assert {"slow_calls", "open_elapsed"} <= triggers
