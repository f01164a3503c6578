"""The outage scenario with several real worker processes calling llm_call in a loop.

Primary goes down → the fleet-wide breaker opens and traffic moves to the backup; the primary
stops receiving requests beyond the trip threshold, in-flight calls and half-open probes;
primary healthy again → traffic returns to it; both down → AllRoutesFailed with retry_after_s.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from fleet.testing.wait import wait_until
from tests.llm_fixtures import FAST_BREAKER, LocalFleet

PROCESSES = 4


@pytest.fixture
def loaders(local_fleet: LocalFleet) -> Iterator[list[subprocess.Popen[bytes]]]:
    # the providers' latency paces the loaders (the loop itself never sleeps)
    for sim in (local_fleet.primary, local_fleet.backup):
        sim.set_mode("healthy", latency_ms=10)
    settings = local_fleet.settings
    env = {
        **os.environ,
        "FLEET_REDIS_URL": settings.redis_url,
        "FLEET_NAMESPACE": settings.namespace,
        "FLEET_REGISTRY_PATH": str(local_fleet.registry_path),
    }
    root = Path(__file__).resolve().parent.parent
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests._llm_loop", f"loader-{i}"],
            cwd=root,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for i in range(PROCESSES)
    ]
    yield procs
    redis.Redis.from_url(settings.redis_url).rpush(settings.key("test", "stop"), 1)
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def calls(local_fleet: LocalFleet) -> list[dict[str, object]]:
    client = redis.Redis.from_url(local_fleet.settings.redis_url)
    key = local_fleet.settings.key("test", "calls")
    return [json.loads(x) for x in client.lrange(key, 0, -1)]


def primary_events(local_fleet: LocalFleet, to_state: str) -> list[dict[str, str]]:
    """Transitions of the primary's provider scope into ``to_state``, from the event stream."""
    client = redis.Redis.from_url(local_fleet.settings.redis_url, decode_responses=True)
    events = client.xrange(local_fleet.settings.key("events"))
    return [e for _id, e in events if e.get("scope") == "sim-primary" and e.get("to") == to_state]


def primary_trips(local_fleet: LocalFleet) -> int:
    """How many times the primary's provider scope opened."""
    return len(primary_events(local_fleet, "open"))


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_fleet_fails_over_together_and_comes_back(
    local_fleet: LocalFleet, loaders: list[subprocess.Popen[bytes]]
) -> None:
    def served_by_primary_per_worker() -> bool:
        seen = {c["worker"] for c in calls(local_fleet) if c.get("model", "").startswith("sim-p")}  # type: ignore[union-attr]
        return len(seen) == PROCESSES

    wait_until(served_by_primary_per_worker, timeout_s=60, message="every loader on the primary")

    # t0: the primary goes down.
    local_fleet.primary.reset_counts()
    t0 = time.time()
    local_fleet.primary.set_mode("down")
    n0 = len(calls(local_fleet))

    def moved_to_backup() -> bool:
        recent = calls(local_fleet)[n0:]
        tail = recent[-2 * PROCESSES :]
        return len(recent) > 4 * PROCESSES and all(
            c.get("model") == "sim-backup/sim-tiny" for c in tail
        )

    wait_until(moved_to_backup, timeout_s=30, message="the fleet on the backup")
    # Let the outage run on: many more calls, through several half-open periods.
    n1 = len(calls(local_fleet))
    wait_until(lambda: len(calls(local_fleet)) > n1 + 200, timeout_s=60, message="200 more calls")
    reached_primary = int(local_fleet.primary.stats()["total_requests"])
    trips = primary_trips(local_fleet)
    threshold = int(FAST_BREAKER["consecutive_failures"])  # type: ignore[call-overload]
    after_t0 = calls(local_fleet)[n0:]
    opened_at = min(float(e["at_ms"]) / 1000 for e in primary_events(local_fleet, "open"))
    print(
        f"\noutage: {len(after_t0)} calls after t0 by {PROCESSES} processes, "
        f"{reached_primary} reached the dead primary, {trips} trips, "
        f"breaker open {opened_at - t0:.3f}s after t0"
    )
    assert trips >= 1
    # One decision for the fleet: threshold + one in-flight call per process + one probe per
    # half-open period (each reopening is a trip), not PROCESSES x threshold per period.
    assert reached_primary <= threshold + PROCESSES + trips
    assert all(c.get("model") for c in after_t0), "the backup was healthy: no call may fail"

    # Recovery: traffic returns to the primary within the open period plus a probe.
    t1 = time.time()
    local_fleet.primary.set_mode("healthy")
    n2 = len(calls(local_fleet))

    def back_on_primary() -> bool:
        tail = calls(local_fleet)[n2:][-2 * PROCESSES :]
        return len(tail) == 2 * PROCESSES and all(
            c.get("model") == "sim-primary/sim-small" for c in tail
        )

    wait_until(back_on_primary, timeout_s=30, message="traffic back on the primary")
    first_back = min(
        float(c["at"])  # type: ignore[arg-type]
        for c in calls(local_fleet)[n2:]
        if c.get("model") == "sim-primary/sim-small"
    )
    print(f"recovery: first call served by the primary {first_back - t1:.3f}s after it healed")

    # Both down: AllRoutesFailed, and once the breakers are open, a retry_after_s.
    local_fleet.primary.set_mode("down")
    local_fleet.backup.set_mode("down")
    n3 = len(calls(local_fleet))

    def told_when_to_come_back() -> bool:
        return any(
            c.get("error") == "all_routes_failed" and c.get("retry_after_s")
            for c in calls(local_fleet)[n3:]
        )

    wait_until(told_when_to_come_back, timeout_s=30, message="AllRoutesFailed with retry_after")
    assert all(p.poll() is None for p in loaders), "a loader crashed"
