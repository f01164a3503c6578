"""The fleet breaker across real OS processes sharing one Redis (tests/_breaker_worker.py).

Each worker is a separate ``python -m tests._breaker_worker`` process with its own FleetBreaker.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from breaker_service import BreakerPolicy, FleetBreaker, Outcome, OutcomeClass, Permit, Scope
from breaker_service.store.redis import RedisStore
from fleet.providers.simulated import SimulatedProvider
from fleet.testing import wait_until
from fleet.testing.redis_container import RedisContainer

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
NS = "fleet-t"
PROV = Scope("prov")
FAIL = Outcome(OutcomeClass.FAILURE, latency_ms=1.0)


@dataclass
class Sims:
    """The simulated provider the workers call and the backup that takes rejected calls."""

    provider: SimulatedProvider
    backup: SimulatedProvider

    def args(self) -> dict[str, str]:
        return {
            "provider": f"http://127.0.0.1:{self.provider.port}",
            "backup": f"http://127.0.0.1:{self.backup.port}",
        }


class Fleet:
    """Worker processes started for one test; every one is killed at teardown."""

    def __init__(self, url: str, tmp: Path, sims: Sims) -> None:
        self.url = url
        self.tmp = tmp
        self.sims = sims
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, worker: str, mode: str, policy: BreakerPolicy, **extra: str) -> None:
        cmd = [
            sys.executable, "-m", "tests._breaker_worker", "--url", self.url,
            "--namespace", NS, "--worker", worker, "--mode", mode,
            "--policy", policy.model_dump_json(),
        ]  # fmt: skip
        for key, value in {**self.sims.args(), **extra}.items():
            cmd += [f"--{key.replace('_', '-')}", value]
        with (self.tmp / f"{worker}.log").open("wb") as log:
            self.procs[worker] = subprocess.Popen(
                cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ}
            )

    def wait_exit(self, timeout_s: float = 30) -> None:
        for name, proc in self.procs.items():
            code = proc.wait(timeout=timeout_s)
            assert code == 0, f"{name} exited {code}:\n{self.log(name)}"

    def log(self, worker: str) -> str:
        return (self.tmp / f"{worker}.log").read_text(errors="replace")[-3000:]

    def kill_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)


@pytest.fixture
def side(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url, socket_timeout=5, decode_responses=True)


@pytest.fixture
def sims() -> Iterator[Sims]:
    """Healthy providers whose latency (5 ms, backup 10 ms) paces the worker loops."""
    with (
        SimulatedProvider(port=0, control_port=0, name="sim-provider", latency_ms=5) as p,
        SimulatedProvider(port=0, control_port=0, name="sim-backup", latency_ms=10) as b,
    ):
        yield Sims(p, b)


@pytest.fixture
def fleet(redis_url: str, tmp_path: Path, sims: Sims) -> Iterator[Fleet]:
    f = Fleet(redis_url, tmp_path, sims)
    yield f
    f.kill_all()


def _observations(side: redis.Redis) -> list[dict[str, Any]]:
    return [json.loads(x) for x in side.lrange(f"{NS}:test:obs", 0, -1)]


def _events(side: redis.Redis) -> list[dict[str, str]]:
    return [fields for _id, fields in side.xrange(f"{NS}:events")]


def _local_breaker(url: str, policy: BreakerPolicy) -> FleetBreaker:
    """The test's own in-process breaker on the same shared state."""
    client = redis.Redis.from_url(url, socket_timeout=2)
    return FleetBreaker(RedisStore(client, namespace=NS), lambda _s: policy, worker_id="test")


def _permit(breaker: FleetBreaker) -> Permit | None:
    decision = breaker.acquire([PROV])
    return decision if isinstance(decision, Permit) else None


def test_failing_provider_every_transition_observed_once(fleet: Fleet, side: redis.Redis) -> None:
    policy = BreakerPolicy(
        minimum_calls=1_000,
        consecutive_failures=3,
        open_base_ms=150,
        backoff_factor=1.0,
        open_cap_ms=150,
        jitter_ratio=0,
        half_open_max_probes=2,
        half_open_successes=1,
        probe_lease_ms=5_000,
    )
    fleet.sims.provider.set_mode("down")  # every call answers 503
    for i in range(8):
        fleet.start(f"w{i}", "fail", policy)

    def trips() -> int:
        return sum(1 for e in _events(side) if e["to"] == "open")

    wait_until(lambda: trips() >= 5, timeout_s=30, interval_s=0.1, message="5 trips")
    side.set(f"{NS}:test:stop", 1)
    fleet.wait_exit()

    obs = _observations(side)
    events = _events(side)
    gens = sorted(o["generation"] for o in obs)
    assert gens == list(range(1, len(obs) + 1)), "each transition observed by exactly one worker"
    chain = sorted(obs, key=lambda o: o["generation"])
    assert chain[0]["from"] == "closed" and chain[0]["trigger"] == "consecutive"
    for before, after in itertools.pairwise(chain):
        assert before["to"] == after["from"]
    assert {o["trigger"] for o in chain[1:]} <= {"open_elapsed", "probe_failed"}
    # exactly one event per transition, written by the worker that observed it
    assert sorted((int(e["generation"]), e["to"], e["worker"]) for e in events) == sorted(
        (o["generation"], o["to"], o["worker"]) for o in obs
    )
    assert trips() == sum(1 for o in obs if o["to"] == "open") >= 5
    # half-open never had more than N concurrent probes, and probes did run concurrently-capable
    assert int(side.get(f"{NS}:test:probes") or 0) >= 1
    assert 1 <= int(side.get(f"{NS}:test:gauge_max") or 0) <= policy.half_open_max_probes
    print(
        f"transitions={len(obs)} observers={sorted({o['worker'] for o in obs})} "
        f"probes={side.get(f'{NS}:test:probes')} max_concurrent={side.get(f'{NS}:test:gauge_max')} "
        f"rejects={side.hgetall(f'{NS}:test:rejects')}"
    )


def test_killed_probe_holder_does_not_wedge_the_breaker(fleet: Fleet, side: redis.Redis) -> None:
    policy = BreakerPolicy(
        minimum_calls=1_000,
        consecutive_failures=3,
        open_base_ms=100,
        jitter_ratio=0,
        half_open_max_probes=1,
        half_open_successes=2,
        probe_lease_ms=1_500,
    )
    breaker = _local_breaker(fleet.url, policy)
    for _ in range(3):
        permit = breaker.acquire([PROV])
        assert isinstance(permit, Permit)
        breaker.record(permit, FAIL)
    assert breaker.snapshot(PROV).state == "open"
    fleet.start("holder", "hold_probe", policy)
    wait_until(
        lambda: side.llen(f"{NS}:test:holding"), timeout_s=20, message="holder takes the probe"
    )
    held = breaker.snapshot(PROV)
    assert (held.state, held.probes_in_flight) == ("half_open", 1)
    fleet.procs["holder"].send_signal(signal.SIGKILL)
    fleet.procs["holder"].wait(timeout=10)
    for i in range(7):
        fleet.start(f"s{i}", "succeed", policy)
    wait_until(
        lambda: breaker.snapshot(PROV).state == "closed",
        timeout_s=25,
        interval_s=0.05,
        message="breaker closes after the dead holder's lease expires",
    )
    side.set(f"{NS}:test:stop", 1)
    del fleet.procs["holder"]
    fleet.wait_exit()
    closes = [o for o in _observations(side) if o["to"] == "closed"]
    assert len(closes) == 1 and closes[0]["worker"].startswith("s")
    assert closes[0]["trigger"] == "probes_succeeded"
    assert breaker.snapshot(PROV).trips == 0
    breaker.close()


def test_outcome_from_old_generation_does_not_change_state(fleet: Fleet, side: redis.Redis) -> None:
    policy = BreakerPolicy(
        minimum_calls=1_000, consecutive_failures=3, open_base_ms=100, jitter_ratio=0
    )
    fleet.start("old", "old_gen", policy)
    acquired = wait_until(
        lambda: side.lpop(f"{NS}:test:acquired"), timeout_s=20, message="old worker acquires"
    )
    assert json.loads(acquired) == ["allow", 0]
    breaker = _local_breaker(fleet.url, policy)
    for _ in range(3):
        permit = breaker.acquire([PROV])
        assert isinstance(permit, Permit)
        breaker.record(permit, FAIL)
    probe = wait_until(
        lambda: _permit(breaker),
        timeout_s=10,
        message="half-open",
    )
    before = breaker.snapshot(PROV)
    assert before.state == "half_open"
    side.rpush(f"{NS}:test:go", 1)
    wait_until(lambda: side.llen(f"{NS}:test:done"), timeout_s=20, message="old worker records")
    fleet.wait_exit()
    after = breaker.snapshot(PROV)
    assert (after.state, after.generation) == ("half_open", before.generation)
    assert after.failures == before.failures + 1  # counted in the window, nothing else
    breaker.record(probe, FAIL)
    assert breaker.snapshot(PROV).state == "open"  # a current-generation failure does reopen
    breaker.close()


def _lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def test_paused_redis_every_process_degrades_per_setting(
    redis_container: RedisContainer, tmp_path: Path, sims: Sims
) -> None:
    server = redis_container
    fleet = Fleet(server.url, tmp_path, sims)
    stop = tmp_path / "stop"
    policy = BreakerPolicy()
    modes = (
        {f"l{i}": "local" for i in range(3)}
        | {f"c{i}": "fail_closed" for i in range(3)}
        | {f"o{i}": "fail_open" for i in range(2)}
    )
    degraded_as = {"local": "degraded", "fail_closed": "reject", "fail_open": "bypass"}
    outs = {w: tmp_path / f"{w}.jsonl" for w in modes}
    try:
        for w, mode in modes.items():
            fleet.start(w, "pace", policy, fallback=mode, out=str(outs[w]), stop_file=str(stop))

        def all_see(decisions: set[str], start: dict[str, int]) -> bool:
            return all(
                any(r.get("d") in decisions for r in _lines(outs[w])[start[w] :]) for w in modes
            )

        zero = dict.fromkeys(modes, 0)
        wait_until(lambda: all_see({"allow"}, zero), timeout_s=30, message="all workers allowed")
        server.pause()
        mark = {w: len(_lines(outs[w])) for w in modes}
        wait_until(
            lambda: all(
                any(r.get("d") == degraded_as[modes[w]] for r in _lines(outs[w])[mark[w] :])
                for w in modes
            ),
            timeout_s=20,
            message="every process degrades per its fallback",
        )
        server.unpause()
        mark = {w: len(_lines(outs[w])) for w in modes}
        wait_until(lambda: all_see({"allow"}, mark), timeout_s=20, message="all rejoin")
        wait_until(
            lambda: all(any(r.get("event") == "recovered" for r in _lines(outs[w])) for w in modes),
            timeout_s=20,
            message="each process reports recovery",
        )
        stop.touch()
        fleet.wait_exit()
    finally:
        fleet.kill_all()
    rows = {w: _lines(outs[w]) for w in modes}
    errors = [(w, r) for w, rs in rows.items() for r in rs if r.get("d") == "error"]
    assert errors == [], "no call may raise (RedisError or otherwise)"
    for w, rs in rows.items():
        seen = {r.get("d") for r in rs} | {r.get("reason") for r in rs}
        others = {"degraded", "store_unavailable", "bypass"} - {degraded_as[modes[w]]}
        expected = "store_unavailable" if modes[w] == "fail_closed" else degraded_as[modes[w]]
        assert expected in seen and not (seen & others - {expected}), (w, seen)
    slowest = max(r["ms"] for rs in rows.values() for r in rs if "ms" in r)
    print(f"slowest call while Redis paused: {slowest} ms (socket timeout 250 ms)")
