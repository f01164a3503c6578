"""`fleet escalations ...` against a real Redis: filters, tables, JSON, requeue through the real
job client, resolve, purge, and the exit codes 0/1/2/3."""

from __future__ import annotations

import json
import time
import uuid

import pytest
import redis
from typer.testing import CliRunner

from fleet.cli import build_app
from fleet.escalation import EscalationQueue
from fleet.settings import FleetSettings
from fleet.testing import free_port
from fleet.types import Attempt

QUEUE = "esc-cli-test"


@pytest.fixture
def env(fleet_settings: FleetSettings) -> dict[str, str]:
    return {
        "FLEET_REDIS_URL": fleet_settings.redis_url,
        "FLEET_NAMESPACE": "test",
        "COLUMNS": "200",  # wide enough that rich never elides a cell
    }


def run(env: dict[str, str], *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(build_app(), ["escalations", *args], env=env)
    return result.exit_code, result.output


def park(
    settings: FleetSettings,
    client: redis.Redis,
    *,
    task_type: str = "gap_analysis",
    provider: str = "sim-primary",
    reason: str = "all_routes_failed",
    age_s: float = 0,
) -> str:
    queue = EscalationQueue(settings, client, lambda job: None, clock=lambda: time.time() - age_s)
    job_id = uuid.uuid4().hex
    job = {
        "job_id": job_id,
        "agent": "seo",
        "task_type": task_type,
        "payload": {"topic": "x"},
        "queue": QUEUE,
    }
    attempts = [
        Attempt(model=f"{provider}/llama-8b", provider=provider, outcome="failure", status=503),
        Attempt(model="sim-backup/llama-8b", provider="sim-backup", outcome="rejected"),
    ]
    return queue.park(
        job=job,
        reason=reason,
        policy="escalate",
        task_type=task_type,
        attempts=attempts,
        queue=QUEUE,
    ).id


def queued_messages(client: redis.Redis) -> list[bytes]:
    """Celery messages on the job's original queue (the broker list, whatever its prefix)."""
    keys = [k for k in client.keys(f"*{QUEUE}") if client.type(k) == b"list"]
    return [m for k in keys for m in client.lrange(k, 0, -1)]


def ids(output: str) -> list[str]:
    return [e["id"] for e in json.loads(output)]


def test_list_filters_and_json(
    env: dict[str, str], fleet_settings: FleetSettings, client: redis.Redis
) -> None:
    old = park(fleet_settings, client, age_s=3600)
    other = park(fleet_settings, client, task_type="summary", provider="other", age_s=60)
    new = park(fleet_settings, client, reason="redeliveries_exhausted")
    code, out = run(env, "list", "--json")
    assert code == 0 and ids(out) == [old, other, new]
    assert ids(run(env, "list", "--json", "--task-type", "summary")[1]) == [other]
    assert ids(run(env, "list", "--json", "--provider", "sim-primary")[1]) == [old, new]
    assert ids(run(env, "list", "--json", "--older-than", "10m")[1]) == [old]
    assert ids(run(env, "list", "--json", "--older-than", "30")[1]) == [old, other]
    assert ids(run(env, "list", "--json", "--reason", "redeliveries_exhausted")[1]) == [new]
    assert ids(run(env, "list", "--json", "--status", "resolved")[1]) == []
    code, table = run(env, "list")
    assert code == 0
    assert old in table and "gap_analysis" in table and "1h00m" in table
    code, narrow = run({**env, "COLUMNS": "80"}, "list")
    assert code == 0
    assert all(entry_id in narrow for entry_id in (old, other, new))  # ids are never elided


def test_count_and_bad_filters(
    env: dict[str, str], fleet_settings: FleetSettings, client: redis.Redis
) -> None:
    park(fleet_settings, client)
    park(fleet_settings, client, task_type="summary")
    assert run(env, "count") == (0, "2\n")
    code, out = run(env, "count", "--task-type", "summary", "--json")
    assert code == 0 and json.loads(out)["count"] == 1
    code, out = run(env, "count", "--older-than", "ten minutes")
    assert code == 2 and "e.g. 10m" in out
    code, out = run(env, "list", "--status", "closed")
    assert code == 2 and "open, requeued, resolved, all" in out


def test_show_prints_attempt_history(
    env: dict[str, str], fleet_settings: FleetSettings, client: redis.Redis
) -> None:
    entry_id = park(fleet_settings, client)
    code, out = run(env, "show", entry_id)
    assert code == 0
    assert "attempts" in out and "sim-primary/llama-8b" in out and "rejected" in out
    code, out = run(env, "show", entry_id, "--json")
    assert code == 0
    assert [a["outcome"] for a in json.loads(out)["attempts"]] == ["failure", "rejected"]
    code, out = run(env, "show", "e999999999999")
    assert code == 1 and "no escalation entry" in out


def test_requeue_sends_the_job_back_to_its_queue(
    env: dict[str, str], fleet_settings: FleetSettings, client: redis.Redis
) -> None:
    entry_id = park(fleet_settings, client)
    code, out = run(env, "requeue", entry_id, "--actor", "alice", "--json")
    assert code == 0, out
    [entry] = json.loads(out)
    assert (entry["status"], entry["replay_count"], entry["requeued_by"]) == (
        "requeued",
        1,
        "alice",
    )
    # The real job client put one Celery message on the job's original queue.
    [message] = queued_messages(client)
    assert entry["job_id"].encode() in message
    code, out = run(env, "requeue", entry_id)
    assert code == 1 and "not open" in out and "--force" in out
    assert len(queued_messages(client)) == 1
    # --force hands a requeued entry over once more (e.g. the first hand-off was lost).
    code, out = run(env, "requeue", entry_id, "--force", "--json")
    assert code == 0, out
    assert json.loads(out)[0]["replay_count"] == 2


def test_requeue_matching_and_all(
    env: dict[str, str], fleet_settings: FleetSettings, client: redis.Redis
) -> None:
    park(fleet_settings, client, task_type="summary")
    park(fleet_settings, client)
    park(fleet_settings, client)
    code, out = run(env, "requeue", "--matching", "--task-type", "summary", "--json")
    assert code == 0, out
    assert [e["task_type"] for e in json.loads(out)] == ["summary"]
    code, out = run(env, "requeue", "--all", "--json")
    assert code == 0 and len(json.loads(out)) == 2
    assert len(queued_messages(client)) == 3
    assert run(env, "count")[1] == "0\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "exactly one of"),
        (("--all", "--matching", "--reason", "x"), "exactly one of"),
        (("--matching",), "needs a filter"),
        (("--all", "--reason", "x"), "only apply with --matching"),
        (("--all", "--force"), "--force only applies"),
    ],
)
def test_requeue_usage_errors_exit_2(
    env: dict[str, str], args: tuple[str, ...], message: str
) -> None:
    code, out = run(env, "requeue", *args)
    assert code == 2
    assert message in out


def test_resolve_and_purge(
    env: dict[str, str], fleet_settings: FleetSettings, client: redis.Redis
) -> None:
    first = park(fleet_settings, client)
    keep = park(fleet_settings, client)
    code, out = run(env, "resolve", first, "--note", "answered by hand", "--actor", "bob")
    assert code == 0 and "answered by hand" in out
    code, out = run(env, "resolve", first, "--note", "again")
    assert code == 1 and "already resolved" in out
    code, out = run(env, "resolve", keep)
    assert code == 2 and "--note" in out
    code, out = run(env, "purge", "--older-than", "1h", "--json")
    assert code == 0 and json.loads(out)["purged"] == 0
    code, out = run(env, "purge")
    assert code == 0 and "purged 1" in out
    assert ids(run(env, "list", "--json", "--status", "all")[1]) == [keep]


def test_redis_down_exits_3_and_bad_settings_exit_2() -> None:
    down = {"FLEET_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    code, out = run(down, "list")
    assert code == 3 and "FLEET_REDIS_URL" in out
    code, out = run(down, "count")
    assert code == 3
    code, out = run({"FLEET_REDIS_URL": "http://127.0.0.1:1"}, "list")
    assert code == 2 and "FLEET_REDIS_URL" in out
