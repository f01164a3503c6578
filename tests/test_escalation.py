"""The escalation queue on a real Redis: park, filters, requeue (at most once), resolve, purge,
auto-replay, and Redis errors that never read as an empty queue."""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from typing import Any

import pytest
import redis

from fleet.errors import EscalationConflict, EscalationNotFound, StateUnavailable
from fleet.escalation import EscalationQueue
from fleet.redis_client import make_redis
from fleet.settings import FleetSettings
from fleet.testing import free_port
from fleet.types import Attempt


class Clock:
    """A settable clock (seconds)."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def failed(provider: str, model: str, outcome: str = "failure") -> Attempt:
    return Attempt(model=f"{provider}/{model}", provider=provider, outcome=outcome, status=503)


PRIMARY = [failed("sim-primary", "m1"), failed("sim-backup", "m2")]


class RedisRequeue:
    """A real requeue callback: pushes the job onto a Redis list (what a broker would hold)."""

    def __init__(self, client: redis.Redis, key: str, fail: bool = False) -> None:
        self.client, self.key, self.fail = client, key, fail

    def __call__(self, job: Mapping[str, Any]) -> None:
        if self.fail:
            raise RuntimeError("broker refused the job")
        self.client.rpush(self.key, json.dumps(dict(job)))

    def jobs(self) -> list[dict[str, Any]]:
        return [json.loads(raw) for raw in self.client.lrange(self.key, 0, -1)]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sink(client: redis.Redis) -> RedisRequeue:
    return RedisRequeue(client, "test:requeued")


@pytest.fixture
def queue(
    fleet_settings: FleetSettings, client: redis.Redis, sink: RedisRequeue, clock: Clock
) -> EscalationQueue:
    return EscalationQueue(
        fleet_settings,
        client,
        sink,
        auto_replay_enabled=lambda task_type: task_type != "no_replay",
        clock=clock,
    )


def park(
    queue: EscalationQueue,
    job_id: str,
    *,
    task_type: str = "summary",
    reason: str = "all_routes_failed",
    attempts: list[Attempt] | None = None,
) -> str:
    job = {"job_id": job_id, "queue": "celery", "task_type": task_type, "agent": "a"}
    entry = queue.park(
        job=job,
        reason=reason,
        policy="escalate",
        task_type=task_type,
        attempts=PRIMARY if attempts is None else attempts,
        queue="celery",
    )
    return entry.id


def assert_indexes_consistent(settings: FleetSettings, client: redis.Redis) -> None:
    """Every entry is in the 'all' index and in exactly the index of its status."""
    all_ids = {m.decode() for m in client.zrange(settings.key("esc", "all"), 0, -1)}
    per_status = {
        s: {m.decode() for m in client.zrange(settings.key("esc", "status", s), 0, -1)}
        for s in ("open", "requeued", "resolved")
    }
    assert set().union(*per_status.values()) == all_ids
    for entry_id in all_ids:
        status = client.hget(settings.key("esc", "entry", entry_id), "status")
        assert status is not None, entry_id
        assert [s for s, ids in per_status.items() if entry_id in ids] == [status.decode()]


def test_park_stores_entry_with_history_and_derived_scopes(
    queue: EscalationQueue, fleet_settings: FleetSettings, client: redis.Redis
) -> None:
    entry_id = park(queue, "job-1")
    entry = queue.get(entry_id)
    assert entry.job_id == "job-1"
    assert entry.job["agent"] == "a"
    assert entry.status == "open"
    assert entry.replay_count == 0
    assert entry.providers == ["sim-primary", "sim-backup"]
    assert entry.scopes == ["sim-primary", "sim-backup", "sim-primary/m1", "sim-backup/m2"]
    assert entry.attempts == PRIMARY
    assert entry.created_at == 1_000_000.0
    assert_indexes_consistent(fleet_settings, client)


def test_get_unknown_entry_raises_not_found(queue: EscalationQueue) -> None:
    with pytest.raises(EscalationNotFound, match="nope"):
        queue.get("nope")


def test_park_requires_job_id(queue: EscalationQueue) -> None:
    with pytest.raises(ValueError, match="job_id"):
        queue.park(job={}, reason="r", policy="escalate", task_type="t", attempts=[], queue="q")


def test_list_filters_and_orders_oldest_first(queue: EscalationQueue, clock: Clock) -> None:
    a = park(queue, "a", task_type="summary")
    clock.now += 600
    b = park(queue, "b", task_type="research", reason="redeliveries_exhausted")
    clock.now += 600
    c = park(queue, "c", attempts=[failed("other", "x")])
    assert [e.id for e in queue.list()] == [a, b, c]
    assert [e.id for e in queue.list(task_type="research")] == [b]
    assert [e.id for e in queue.list(reason="redeliveries_exhausted")] == [b]
    assert [e.id for e in queue.list(provider="other")] == [c]
    assert [e.id for e in queue.list(provider="sim-backup")] == [a, b]
    assert [e.id for e in queue.list(older_than_s=600)] == [a, b]
    assert [e.id for e in queue.list(older_than_s=1200)] == [a]
    assert [e.id for e in queue.list(limit=2)] == [a, b]
    assert queue.list(status="resolved") == []
    assert queue.count() == 3
    assert queue.count(provider="sim-primary") == 2
    assert queue.count(status="all", older_than_s=601) == 1
    with pytest.raises(ValueError, match="status"):
        queue.list(status="closed")  # type: ignore[arg-type]


def test_list_pages_through_more_entries_than_one_batch(queue: EscalationQueue) -> None:
    ids = [park(queue, f"j{i}") for i in range(450)]
    assert [e.id for e in queue.list(limit=None)] == ids
    assert queue.count(task_type="summary") == 450


def test_requeue_claims_once_and_hands_job_to_callback(
    queue: EscalationQueue, sink: RedisRequeue, fleet_settings: FleetSettings, client: redis.Redis
) -> None:
    entry_id = park(queue, "job-1")
    entry = queue.requeue(entry_id, actor="alice")
    assert entry.status == "requeued"
    assert entry.replay_count == 1
    assert entry.requeued_by == "alice"
    assert [j["job_id"] for j in sink.jobs()] == ["job-1"]
    with pytest.raises(EscalationConflict, match="requeued"):
        queue.requeue(entry_id, actor="bob")
    assert len(sink.jobs()) == 1
    with pytest.raises(EscalationNotFound):
        queue.requeue("missing", actor="bob")
    forced = queue.requeue(entry_id, actor="bob", force=True)
    assert (forced.status, forced.replay_count, forced.requeued_by) == ("requeued", 2, "bob")
    assert len(sink.jobs()) == 2
    queue.resolve(entry_id, note="done", actor="bob")
    with pytest.raises(EscalationConflict, match="resolved"):
        queue.requeue(entry_id, actor="bob", force=True)
    assert len(sink.jobs()) == 2
    assert_indexes_consistent(fleet_settings, client)


def test_failed_requeue_gives_entry_back(
    fleet_settings: FleetSettings, client: redis.Redis, clock: Clock
) -> None:
    broken = EscalationQueue(
        fleet_settings, client, RedisRequeue(client, "x", fail=True), clock=clock
    )
    entry_id = park(broken, "job-1")
    with pytest.raises(RuntimeError, match="broker refused"):
        broken.requeue(entry_id, actor="alice")
    entry = broken.get(entry_id)
    assert (entry.status, entry.replay_count, entry.requeued_by) == ("open", 0, "")
    assert_indexes_consistent(fleet_settings, client)


def test_concurrent_requeues_hand_the_job_over_exactly_once(
    fleet_settings: FleetSettings, queue: EscalationQueue, sink: RedisRequeue
) -> None:
    entry_id = park(queue, "job-1")
    outcomes: list[str] = []
    barrier = threading.Barrier(8)

    def worker() -> None:
        conn = make_redis(fleet_settings)
        try:
            mine = EscalationQueue(fleet_settings, conn, RedisRequeue(conn, sink.key))
            barrier.wait()
            try:
                mine.requeue(entry_id, actor="t")
                outcomes.append("ok")
            except EscalationConflict:
                outcomes.append("conflict")
        finally:
            conn.close()

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["conflict"] * 7 + ["ok"]
    assert len(sink.jobs()) == 1
    assert queue.get(entry_id).replay_count == 1


def test_requeue_matching_filters_and_all(queue: EscalationQueue, sink: RedisRequeue) -> None:
    park(queue, "a", task_type="summary")
    park(queue, "b", task_type="research")
    park(queue, "c", task_type="summary")
    done = queue.requeue_matching(actor="ops", task_type="summary")
    assert [e.job_id for e in done] == ["a", "c"]
    rest = queue.requeue_matching(actor="ops")
    assert [e.job_id for e in rest] == ["b"]
    assert [j["job_id"] for j in sink.jobs()] == ["a", "c", "b"]
    assert queue.count() == 0
    assert queue.count(status="requeued") == 3


def test_resolve_with_note_then_purge(
    queue: EscalationQueue, clock: Clock, fleet_settings: FleetSettings, client: redis.Redis
) -> None:
    old = park(queue, "old")
    recent = park(queue, "recent")
    keep = park(queue, "keep")
    resolved = queue.resolve(old, note="answered by hand", actor="alice")
    assert (resolved.status, resolved.note, resolved.resolved_by) == (
        "resolved",
        "answered by hand",
        "alice",
    )
    assert resolved.resolved_at == clock.now
    with pytest.raises(EscalationConflict, match="already resolved"):
        queue.resolve(old, note="again", actor="bob")
    with pytest.raises(EscalationConflict):
        queue.requeue(old, actor="bob")
    with pytest.raises(ValueError, match="note"):
        queue.resolve(keep, note=" ", actor="bob")
    clock.now += 3600
    queue.requeue(recent, actor="ops")
    queue.resolve(recent, note="requeued one confirmed done", actor="ops")
    assert queue.purge_resolved(older_than_s=1800) == 1
    with pytest.raises(EscalationNotFound):
        queue.get(old)
    assert queue.get(recent).status == "resolved"
    assert queue.purge_resolved() == 1
    assert [e.id for e in queue.list(status="all")] == [keep]
    assert client.get(fleet_settings.key("esc", "job", "old")) is None
    assert_indexes_consistent(fleet_settings, client)


def test_auto_replay_requeues_entries_of_that_scope_once_in_order(
    queue: EscalationQueue, sink: RedisRequeue, clock: Clock
) -> None:
    first = park(queue, "j1")
    clock.now += 1
    park(queue, "j2", task_type="no_replay")
    clock.now += 1
    park(queue, "j3", attempts=[failed("other", "x")])
    clock.now += 1
    last = park(queue, "j4", attempts=[failed("sim-primary", "m9")])
    assert queue.auto_replay("sim-primary/m1") == 1
    assert [j["job_id"] for j in sink.jobs()] == ["j1"]
    assert queue.auto_replay("sim-primary") == 1
    assert [j["job_id"] for j in sink.jobs()] == ["j1", "j4"]
    assert queue.get(first).auto_replayed
    assert queue.get(last).requeued_by == "auto-replay:sim-primary"
    assert queue.auto_replay("sim-primary") == 0

    # j1 escalates again after its automatic replay: it waits for a person this time.
    again = park(queue, "j1")
    entry = queue.get(again)
    assert entry.auto_replayed
    assert entry.replay_count == 1
    assert entry.previous_id == first
    assert queue.auto_replay("sim-primary") == 0
    assert queue.requeue(again, actor="ops").replay_count == 2


def test_auto_replay_gives_back_on_requeue_failure(
    fleet_settings: FleetSettings, client: redis.Redis
) -> None:
    broken = EscalationQueue(
        fleet_settings,
        client,
        RedisRequeue(client, "x", fail=True),
        auto_replay_enabled=lambda t: True,
    )
    entry_id = park(broken, "j1")
    with pytest.raises(RuntimeError):
        broken.auto_replay("sim-primary")
    entry = broken.get(entry_id)
    assert (entry.status, entry.auto_replayed, entry.replay_count) == ("open", False, 0)


def test_redis_down_raises_state_unavailable_never_empty() -> None:
    settings = FleetSettings.load(redis_url=f"redis://127.0.0.1:{free_port()}/0", namespace="t")
    conn = make_redis(settings)
    try:
        queue = EscalationQueue(settings, conn, lambda job: None)
        with pytest.raises(StateUnavailable, match="FLEET_REDIS_URL"):
            queue.list()
        with pytest.raises(StateUnavailable):
            queue.count()
        with pytest.raises(StateUnavailable):
            queue.park(
                job={"job_id": "j"}, reason="r", policy="escalate", task_type="t", attempts=[],
                queue="q",
            )  # fmt: skip
    finally:
        conn.close()
