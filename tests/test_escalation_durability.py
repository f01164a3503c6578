"""The escalation queue survives a Redis restart (AOF on) and a writer killed mid-flight."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest
import redis

from fleet.escalation import EscalationQueue
from fleet.redis_client import make_redis
from fleet.settings import FleetSettings
from fleet.testing import wait_until
from fleet.testing.redis_container import RedisContainer
from fleet.types import Attempt

pytestmark = pytest.mark.docker

ATTEMPTS = [
    Attempt(model="sim-primary/m1", provider="sim-primary", outcome="failure", status=503),
    Attempt(model="sim-backup/m2", provider="sim-backup", outcome="rejected", breaker="reject"),
]


def assert_indexes_consistent(settings: FleetSettings, client: redis.Redis) -> None:
    """Every entry hash is in the 'all' index and in exactly the index of its status."""
    all_ids = {m.decode() for m in client.zrange(settings.key("esc", "all"), 0, -1)}
    per_status = {
        s: {m.decode() for m in client.zrange(settings.key("esc", "status", s), 0, -1)}
        for s in ("open", "requeued", "resolved")
    }
    assert set().union(*per_status.values()) == all_ids
    hashes = {k.decode().rsplit(":", 1)[1] for k in client.keys(settings.key("esc", "entry", "*"))}
    assert hashes == all_ids
    for entry_id in all_ids:
        status = client.hget(settings.key("esc", "entry", entry_id), "status")
        assert status is not None
        assert [s for s, ids in per_status.items() if entry_id in ids] == [status.decode()]


def _park_many(queue: EscalationQueue, n: int) -> list[str]:
    ids = []
    for i in range(n):
        entry = queue.park(
            job={"job_id": f"job-{i}", "queue": "celery", "task_type": "summary", "agent": "a"},
            reason="all_routes_failed",
            policy="escalate",
            task_type="summary",
            attempts=ATTEMPTS,
            queue="celery",
        )
        ids.append(entry.id)
    return ids


def test_entries_and_indexes_survive_redis_kill_and_restart(
    redis_container: RedisContainer,
) -> None:
    settings = FleetSettings.load(redis_url=redis_container.url, namespace="dur")
    admin = redis_container.client()
    # Make every write durable before the SIGKILL (the default everysec may lose ~1 s).
    admin.config_set("appendfsync", "always")
    client = make_redis(settings)
    requeued: list[str] = []
    queue = EscalationQueue(settings, client, lambda job: requeued.append(job["job_id"]))
    ids = _park_many(queue, 150)
    queue.requeue(ids[0], actor="ops")
    queue.resolve(ids[1], note="handled by hand", actor="ops")
    before = {e.id: e for e in queue.list(status="all", limit=None)}
    assert len(before) == 150
    client.close()

    redis_container.kill()
    assert not redis_container.ping()
    redis_container.restart()

    client = make_redis(settings)
    try:
        queue = EscalationQueue(settings, client, lambda job: requeued.append(job["job_id"]))
        after = {e.id: e for e in queue.list(status="all", limit=None)}
        assert after == before
        assert queue.count() == 148
        assert queue.count(status="requeued") == 1
        assert queue.get(ids[1]).note == "handled by hand"
        assert_indexes_consistent(settings, client)
        # The restarted queue keeps working: new ids do not collide with the old ones.
        assert _park_many(queue, 1)[0] not in before
    finally:
        client.close()
        admin.close()


WRITER = textwrap.dedent(
    """
    import sys
    from fleet.escalation import EscalationQueue
    from fleet.redis_client import make_redis
    from fleet.settings import FleetSettings
    from fleet.types import Attempt

    settings = FleetSettings.load(redis_url=sys.argv[1], namespace="dur", socket_timeout_s=5)
    queue = EscalationQueue(settings, make_redis(settings), lambda job: None)
    attempt = Attempt(model="p/m", provider="p", outcome="failure")
    i = 0
    while True:
        entry = queue.park(job={"job_id": f"j{i}"}, reason="r", policy="escalate",
                           task_type="t", attempts=[attempt], queue="celery")
        if i % 3 == 0:
            queue.requeue(entry.id, actor="writer")
        elif i % 3 == 1:
            queue.resolve(entry.id, note="n", actor="writer")
        i += 1
    """
)


def test_writer_killed_mid_flight_leaves_no_half_written_entry(
    redis_url: str, fleet_settings: FleetSettings
) -> None:
    settings = FleetSettings.load(redis_url=redis_url, namespace="dur")
    client = make_redis(settings)
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, redis_url],
        cwd=os.path.dirname(os.path.dirname(__file__)),
        stderr=subprocess.PIPE,
    )
    try:
        queue = EscalationQueue(settings, client, lambda job: None)
        wait_until(
            lambda: queue.count(status="all") >= 300 or proc.poll() is not None,
            timeout_s=60,
            message="writer parked 300 entries",
        )
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        assert_indexes_consistent(settings, client)
        entries = queue.list(status="all", limit=None)
        assert len(entries) >= 300
        assert all(e.attempts for e in entries)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        if proc.stderr:
            proc.stderr.close()
        client.close()
