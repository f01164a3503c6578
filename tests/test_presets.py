"""The fleet-wide preset: versioned switch in Redis, cached routing, other processes, outages."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from typing import Any, cast

import pytest
import redis

from fleet.errors import MissingCredential, PresetError, StateUnavailable
from fleet.presets import PresetStore
from fleet.redis_client import make_redis
from fleet.registry import Registry, load_registry
from fleet.routing import OUTAGE_RETRY_S, Router
from fleet.settings import FleetSettings
from fleet.testing import free_port, wait_until
from fleet.testing.redis_container import RedisContainer


def hgetall_calls(client: redis.Redis) -> int:
    """HGETALL commands the server ran since the last CONFIG RESETSTAT (round trips)."""
    stats = cast(dict[str, Any], client.info("commandstats"))
    return int(stats.get("cmdstat_hgetall", {}).get("calls", 0))


KEYS = {"SAMBANOVA_API_KEY": "test-key", "NEBIUS_API_KEY": "test-key"}


class Clock:
    """A hand-moved monotonic clock for the Router's cache."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(scope="module")
def registry() -> Registry:
    return load_registry(environ={})


@pytest.fixture
def store(fleet_settings: FleetSettings, client: redis.Redis, registry: Registry) -> PresetStore:
    return PresetStore(fleet_settings, client, registry)


# ---------------------------------------------------------------- the store


def test_never_switched_means_the_registry_default_at_version_0(store: PresetStore) -> None:
    active = store.active()
    assert (active.name, active.version, active.stale) == ("local", 0, False)
    assert store.history() == []


def test_use_switches_versions_and_audits(store: PresetStore, client: redis.Redis) -> None:
    first = store.use("mixed-optimal", actor="ana@host1", reason="sambanova 5xx", environ=KEYS)
    second = store.use("local", actor="bo@host2", environ=KEYS)
    assert (first.version, second.version) == (1, 2)
    server_now = float(cast(tuple[int, int], client.time())[0])
    assert abs(first.changed_at - server_now) < 3600  # Redis server clock, not zero
    active = store.active()
    assert (active.name, active.version, active.changed_by) == ("local", 2, "bo@host2")
    history = store.history()
    assert [(h.name, h.version, h.changed_by, h.reason) for h in history] == [
        ("local", 2, "bo@host2", ""),
        ("mixed-optimal", 1, "ana@host1", "sambanova 5xx"),
    ]
    assert store.history(limit=1) == history[:1]
    assert cast(bytes, client.hget("test:preset:active", "name")) == b"local"


def test_unknown_preset_is_refused_and_nothing_changes(store: PresetStore) -> None:
    with pytest.raises(PresetError, match=r"unknown preset 'fastest'; known: local"):
        store.use("fastest", actor="ana@host1")
    assert store.active().version == 0
    assert store.history() == []


def test_missing_credentials_of_the_new_preset_are_refused(store: PresetStore) -> None:
    with pytest.raises(MissingCredential) as info:
        store.use("nebius-balanced", actor="ana@host1", environ={"NEBIUS_API_KEY": "k"})
    (problem,) = info.value.problems
    assert "SAMBANOVA_API_KEY is not set" in problem
    assert store.active().version == 0
    skipped = store.use("nebius-balanced", actor="ana", environ={}, check_credentials=False)
    assert skipped.version == 1


def test_concurrent_switches_get_distinct_versions(
    fleet_settings: FleetSettings, registry: Registry
) -> None:
    def switch(name: str) -> None:
        conn = make_redis(fleet_settings)
        try:
            own = PresetStore(fleet_settings, conn, registry)
            for _ in range(10):
                own.use(name, actor=name, environ=KEYS)
        finally:
            conn.close()

    threads = [threading.Thread(target=switch, args=(n,)) for n in ("local", "mixed-optimal")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    conn = make_redis(fleet_settings)
    store = PresetStore(fleet_settings, conn, registry)
    history = store.history(limit=100)
    conn.close()
    assert sorted(h.version for h in history) == list(range(1, 21))
    assert store.active().version == 20


def test_unreachable_redis_raises_state_unavailable(registry: Registry) -> None:
    settings = FleetSettings.load(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    store = PresetStore(settings, make_redis(settings), registry)
    with pytest.raises(StateUnavailable, match="cannot read the active preset"):
        store.active()
    with pytest.raises(StateUnavailable, match="cannot switch"):
        store.use("local", actor="ana")
    with pytest.raises(StateUnavailable, match="history"):
        store.history()


# ---------------------------------------------------------------- the router


def test_router_reads_redis_once_per_cache_period(
    fleet_settings: FleetSettings, client: redis.Redis, store: PresetStore, registry: Registry
) -> None:
    clock = Clock()
    router = Router(fleet_settings, registry, client, clock=clock)
    client.config_resetstat()
    routes = [router.route("gap_analysis") for _ in range(1000)]
    assert hgetall_calls(client) == 1
    assert router.preset_reads == 1
    assert {(r.preset, r.preset_version, r.stale) for r in routes} == {("local", 0, False)}
    assert [m.key for m in routes[0].candidates] == [
        "sim-primary/sim-large",
        "sim-backup/sim-medium",
    ]

    store.use("sambanova-optimized", actor="ana", environ=KEYS)
    assert router.route("gap_analysis").preset == "local"  # cached until preset_cache_s
    clock.advance(fleet_settings.preset_cache_s)
    switched = router.route("gap_analysis")
    assert (switched.preset, switched.preset_version) == ("sambanova-optimized", 1)
    assert switched.candidates[0].key == "sambanova/qwen-32b"
    assert hgetall_calls(client) == 2


def test_router_keeps_last_preset_when_redis_has_an_unknown_one(
    fleet_settings: FleetSettings, client: redis.Redis, store: PresetStore, registry: Registry
) -> None:
    clock = Clock()
    router = Router(fleet_settings, registry, client, clock=clock)
    store.use("mixed-optimal", actor="ana", environ=KEYS)
    assert router.route("classification").preset == "mixed-optimal"
    client.hset("test:preset:active", mapping={"name": "from-a-newer-registry", "version": "2"})
    clock.advance(10)
    route = router.route("classification")
    assert (route.preset, route.preset_version, route.stale) == ("mixed-optimal", 1, True)


CHILD = """
import sys
import redis
from fleet.redis_client import make_redis
from fleet.registry import load_registry
from fleet.routing import Router
from fleet.settings import FleetSettings

settings = FleetSettings.load()
router = Router(settings, load_registry(environ={}), make_redis(settings))
side = redis.Redis.from_url(settings.redis_url, socket_timeout=30)
ask, answer = sys.argv[1], sys.argv[2]
while side.blpop([ask], timeout=20):  # one route per question; no question for 20 s: done
    route = router.route("classification")
    side.rpush(answer, f"{route.preset}@{route.preset_version} {route.candidates[0].key}")
"""


def test_a_separate_process_sees_the_switch_without_restart(
    fleet_settings: FleetSettings, store: PresetStore
) -> None:
    env = {
        **os.environ,
        "FLEET_REDIS_URL": fleet_settings.redis_url,
        "FLEET_NAMESPACE": fleet_settings.namespace,
        "FLEET_PRESET_CACHE_S": "0.05",
    }
    ask, answer = fleet_settings.key("test", "ask"), fleet_settings.key("test", "answer")
    side = redis.Redis.from_url(fleet_settings.redis_url, socket_timeout=30)
    child = subprocess.Popen([sys.executable, "-c", CHILD, ask, answer], env=env)
    seen: list[str] = []

    def routes_to(expected: str) -> bool:
        """Ask the routing process for one route; keep each distinct answer in order."""
        assert child.poll() is None, "the routing process died"
        side.rpush(ask, 1)
        reply = side.blpop([answer], timeout=20)
        assert reply is not None, "the routing process did not answer"
        got = reply[1].decode()
        if not seen or seen[-1] != got:
            seen.append(got)
        return got == expected

    try:
        wait_until(lambda: routes_to("local@0 sim-primary/sim-small"), timeout_s=30)
        store.use("mixed-optimal", actor="ana", environ=KEYS)
        wait_until(lambda: routes_to("mixed-optimal@1 nebius/llama-8b"), timeout_s=30)
        store.use("sambanova-optimized", actor="ana", environ=KEYS)
        wait_until(lambda: routes_to("sambanova-optimized@2 sambanova/llama-8b"), timeout_s=30)
        assert seen == [
            "local@0 sim-primary/sim-small",
            "mixed-optimal@1 nebius/llama-8b",
            "sambanova-optimized@2 sambanova/llama-8b",
        ]
    finally:
        child.kill()
        child.wait(timeout=10)


def test_paused_redis_keeps_the_last_preset_and_says_so_once(
    redis_container: RedisContainer, registry: Registry, caplog: pytest.LogCaptureFixture
) -> None:
    settings = FleetSettings.load(redis_url=redis_container.url, namespace="test")
    conn = make_redis(settings)
    PresetStore(settings, conn, registry).use("nebius-balanced", actor="ana", environ=KEYS)
    clock = Clock()
    router = Router(settings, registry, conn, clock=clock)
    assert router.route("recommendations").preset == "nebius-balanced"

    redis_container.pause()
    try:
        with caplog.at_level(logging.WARNING, logger="fleet.routing"):
            routes = []
            for _ in range(3):
                clock.advance(settings.preset_cache_s)
                routes.append(router.route("recommendations"))
    finally:
        redis_container.unpause()
    assert {(r.preset, r.preset_version, r.stale) for r in routes} == {("nebius-balanced", 1, True)}
    assert routes[0].candidates[0].key == "nebius/deepseek-r1"
    warnings = [
        r.getMessage() for r in caplog.records if "preset_state_unavailable" in r.getMessage()
    ]
    assert len(warnings) == 1, warnings
    assert "keeping last known preset 'nebius-balanced' version 1" in warnings[0]

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fleet.routing"):
        clock.advance(settings.preset_cache_s)
        back = router.route("recommendations")
    assert (back.preset, back.stale) == ("nebius-balanced", False)
    assert any("preset_state_recovered" in r.getMessage() for r in caplog.records)
    conn.close()


def test_redis_down_before_any_read_routes_on_the_default_and_says_so(
    registry: Registry, caplog: pytest.LogCaptureFixture
) -> None:
    settings = FleetSettings.load(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    router = Router(settings, registry, make_redis(settings), clock=Clock())
    with caplog.at_level(logging.WARNING, logger="fleet.routing"):
        route = router.route("data_collection")
    assert (route.preset, route.preset_version, route.stale) == ("local", 0, True)
    (record,) = [r for r in caplog.records if "preset_state_unavailable" in r.getMessage()]
    assert "no preset read yet, using registry default 'local'" in record.getMessage()


def test_an_outage_costs_one_redis_attempt_per_retry_period_not_one_per_call(
    registry: Registry,
) -> None:
    settings = FleetSettings.load(redis_url=f"redis://127.0.0.1:{free_port()}/0", preset_cache_s=0)
    clock = Clock()
    router = Router(settings, registry, make_redis(settings), clock=clock)
    for _ in range(50):
        assert router.route("classification").stale
    assert router.preset_reads == 1
    clock.advance(OUTAGE_RETRY_S)
    router.route("classification")
    assert router.preset_reads == 2
