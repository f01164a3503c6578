"""``fleet breakers``: list, show, control with audit, events, and exit codes (real Redis)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis
from typer.testing import CliRunner

from breaker_service import BreakerPolicy, FleetBreaker, Outcome, OutcomeClass, Permit, Scope
from breaker_service.store.redis import RedisStore
from fleet.cli import build_app
from fleet.settings import FleetSettings
from fleet.testing import free_port, wait_until

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def env(fleet_settings: FleetSettings) -> dict[str, str]:
    return {"FLEET_REDIS_URL": fleet_settings.redis_url, "FLEET_NAMESPACE": "clitest"}


def _run(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(build_app(), ["breakers", *args], env=env)
    return result.exit_code, result.stdout, result.stderr


def _fail(url: str, scope: Scope, times: int) -> None:
    policy = BreakerPolicy(consecutive_failures=5)
    client = redis.Redis.from_url(url)
    breaker = FleetBreaker(
        RedisStore(client, namespace="clitest"), lambda _s: policy, worker_id="t"
    )
    for _ in range(times):
        permit = breaker.acquire([scope])
        assert isinstance(permit, Permit)
        breaker.record(permit, Outcome(OutcomeClass.FAILURE, latency_ms=1.0))
    breaker.close()


def test_list_shows_registry_scopes_and_tripped_ones(env: dict[str, str]) -> None:
    _fail(env["FLEET_REDIS_URL"], Scope("not-in-registry", "m1"), 5)  # trips
    _fail(env["FLEET_REDIS_URL"], Scope("not-in-registry", "m2"), 2)  # counts
    code, out, _err = _run(env, "list", "--json")
    assert code == 0
    rows = {r["scope"]: r for r in json.loads(out)}
    tripped = rows["not-in-registry/m1"]
    assert tripped["state"] == "open" and tripped["trips"] == 1
    assert tripped["open_for_s"] > 0
    counting = rows["not-in-registry/m2"]
    assert counting["state"] == "closed" and counting["calls"] == 2
    assert counting["failure_rate"] == 1.0 and counting["open_for_s"] is None
    assert len(rows) > 1  # the shipped registry's providers and models are listed too
    assert all(r["state"] == "closed" for s, r in rows.items() if s != "not-in-registry/m1")
    assert {"scope", "state", "failure_rate", "calls", "open_until_ms", "trips"} <= set(tripped)
    code, out, _err = _run(env, "list")
    assert code == 0 and "not-in-registry/m1" in out and "open" in out


def test_control_commands_change_state_and_are_audited(env: dict[str, str]) -> None:
    code, out, _ = _run(env, "open", "prov/m1", "--reason", "incident 7", "--actor", "alice")
    assert code == 0 and "forced_open" in out
    code, out, _ = _run(env, "show", "prov/m1", "--json")
    shown = json.loads(out)
    assert code == 0 and shown["state"] == "forced_open" and shown["open_until_ms"] is None
    assert "policy" in shown
    for cmd, state in (("close", "forced_closed"), ("disable", "disabled"), ("reset", "closed")):
        code, out, _ = _run(env, cmd, "prov/m1", "--reason", f"step {cmd}")
        assert code == 0 and state in out
    code, out, _ = _run(env, "events", "--json", "--count", "10")
    events = [json.loads(line) for line in out.splitlines()]
    assert [e["to_state"] for e in events] == ["forced_open", "forced_closed", "disabled", "closed"]
    assert events[0]["actor"] == "alice" and events[0]["reason"] == "incident 7"
    assert all(e["trigger"] == "manual" and e["actor"] for e in events)
    code, out, _ = _run(env, "events", "--count", "1")
    assert code == 0 and "reason='step reset'" in out


def test_usage_and_config_errors_exit_2(env: dict[str, str]) -> None:
    assert _run(env, "open", "prov")[0] == 2  # --reason is required
    code, _out, err = _run(env, "open", "prov", "--reason", " ")
    assert code == 2 and "--reason" in err
    code, _out, err = _run(env, "show", "bad scope!")
    assert code == 2 and "scope" in err
    code, _out, err = _run({**env, "FLEET_SOCKET_TIMEOUT_S": "soon"}, "list")
    assert code == 2 and "FLEET_SOCKET_TIMEOUT_S" in err


def test_unreachable_redis_exits_3(env: dict[str, str]) -> None:
    dead = {**env, "FLEET_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    for args in (("list",), ("show", "prov"), ("reset", "prov", "--reason", "x"), ("events",)):
        code, _out, err = _run(dead, *args)
        assert code == 3, args
        assert "Redis unavailable" in err


def test_events_follow_prints_new_events(env: dict[str, str], tmp_path: Path) -> None:
    assert _run(env, "reset", "prov", "--reason", "before follow")[0] == 0
    out_path = tmp_path / "follow.out"
    cmd = [sys.executable, "-c", "from fleet.cli import main; main()"]
    with out_path.open("wb") as out:
        proc = subprocess.Popen(
            [*cmd, "breakers", "events", "--follow", "--json", "--count", "1"],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env={**os.environ, **env},
        )

    def lines() -> list[dict[str, str]]:
        return [json.loads(x) for x in out_path.read_text().splitlines() if x.startswith("{")]

    try:
        # the newest event is printed first and following starts after it: no race
        wait_until(lambda: len(lines()) == 1, timeout_s=20, message="history line")
        assert _run(env, "open", "prov", "--reason", "while following")[0] == 0
        wait_until(lambda: len(lines()) == 2, timeout_s=20, message="followed event")
        assert [e["reason"] for e in lines()] == ["before follow", "while following"]
        assert proc.poll() is None  # still following
    finally:
        proc.kill()
        proc.wait()
