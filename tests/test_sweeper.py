"""The job sweeper on a real Redis broker: lost messages are re-dispatched, waiting or held ones
are left alone, and a superseded message never runs (real Celery worker processes)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from kombu import Exchange, Queue

from fleet.dispatch import BrokerView, parse_task_id, task_id
from fleet.errors import StateUnavailable
from fleet.jobs import AgentJob, JobClient
from fleet.settings import FleetSettings
from fleet.sweeper import JobSweeper
from fleet.testing import wait_until
from fleet.testing.celery_workers import CeleryWorkers
from tests.test_workers_e2e import Fleet, cli, make_fleet

pytestmark = pytest.mark.docker

AGENT = "research.research"


@pytest.fixture
def jobs(fleet_settings: FleetSettings) -> Iterator[JobClient]:
    settings = fleet_settings.model_copy(update={"sweep_grace_s": 10.0})
    with JobClient(settings) as client:
        yield client


@pytest.fixture
def broker(jobs: JobClient) -> redis.Redis:
    return jobs.redis  # broker and state share one server in these tests


def _queue_key(jobs: JobClient) -> str:
    return f"{jobs.settings.namespace}:celery:agents"


def _queued_task_ids(jobs: JobClient) -> list[str]:
    raw = jobs.redis.lrange(_queue_key(jobs), 0, -1)
    return [json.loads(m)["headers"]["id"] for m in raw]


def _lose_next_message(jobs: JobClient) -> str:
    """What a worker SIGKILLed right after BRPOP does: the oldest message leaves the queue and
    reaches no one."""
    raw = jobs.redis.rpop(_queue_key(jobs))
    assert raw is not None
    return str(json.loads(raw)["headers"]["id"])


def _sweeper(jobs: JobClient, broker: redis.Redis, after_s: float) -> JobSweeper:
    """A sweeper whose clock reads ``after_s`` seconds from now."""
    start = time.time()
    return JobSweeper(jobs, broker, clock=lambda: start + after_s)


def test_task_ids_carry_the_dispatch_number() -> None:
    assert parse_task_id(task_id("a" * 32, 7)) == ("a" * 32, 7)
    assert parse_task_id("not-ours") == (None, None)
    assert parse_task_id("a" * 32 + ".x") == (None, None)
    assert parse_task_id(None) == (None, None)


def test_each_publish_takes_the_next_dispatch_number_of_the_queue(jobs: JobClient) -> None:
    a = jobs.submit(AGENT, {"topic": "a"})
    b = jobs.submit(AGENT, {"topic": "b"})
    da, db = jobs.store.get(a.job_id).dispatch, jobs.store.get(b.job_id).dispatch
    assert 0 < da < db
    assert _queued_task_ids(jobs) == [task_id(b.job_id, db), task_id(a.job_id, da)]


def test_submit_takes_its_dispatch_number_inside_the_create_script(jobs: JobClient) -> None:
    jobs.submit(AGENT, {"topic": "warm-up"})  # loads the scripts
    jobs.redis.config_resetstat()
    jobs.submit(AGENT, {"topic": "counted"})
    stats = jobs.redis.info("commandstats")
    scripts = sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("evalsha", "eval"))
    assert scripts == 1  # record + index + counter + dispatch number: one round trip
    assert int(stats["cmdstat_lpush"]["calls"]) == 1  # and the publish


def test_lost_queued_job_is_redispatched_once(jobs: JobClient, broker: redis.Redis) -> None:
    handle = jobs.submit(AGENT, {"topic": "t"})
    before = jobs.store.get(handle.job_id)
    assert _lose_next_message(jobs) == task_id(handle.job_id, before.dispatch)

    # within the grace period nothing happens
    assert _sweeper(jobs, broker, after_s=5).sweep().redispatched == []

    sweeper = _sweeper(jobs, broker, after_s=11)
    report = sweeper.sweep()
    assert [(r.job_id, r.state, r.reason) for r in report.redispatched] == [
        (handle.job_id, "queued", "queued_message_lost")
    ]
    after = jobs.store.get(handle.job_id)
    assert after.state == "queued"
    assert after.dispatch > before.dispatch
    assert report.redispatched[0].dispatch == after.dispatch
    assert (after.redispatches, after.sweep_reason) == (1, "queued_message_lost")
    assert _queued_task_ids(jobs) == [task_id(handle.job_id, after.dispatch)]
    # the new message is in the queue: a second sweep leaves the job alone
    assert sweeper.sweep().redispatched == []
    assert _sweeper(jobs, broker, after_s=30).sweep().queued_waiting == 1


def test_jobs_still_in_their_queue_are_left_alone(jobs: JobClient, broker: redis.Redis) -> None:
    ids = [jobs.submit(AGENT, {"topic": f"t{i}"}).job_id for i in range(3)]
    report = _sweeper(jobs, broker, after_s=3600).sweep()
    assert report.redispatched == []
    assert (report.queued_checked, report.queued_waiting) == (3, 3)
    assert [jobs.store.get(i).redispatches for i in ids] == [0, 0, 0]


def test_a_lost_job_behind_later_ones_is_found(jobs: JobClient, broker: redis.Redis) -> None:
    """The queue is not empty, but it already serves messages dispatched after the lost one."""
    first = jobs.submit(AGENT, {"topic": "first"}).job_id
    later = jobs.submit(AGENT, {"topic": "later"}).job_id
    _lose_next_message(jobs)  # the oldest: ``first``
    report = _sweeper(jobs, broker, after_s=60).sweep()
    assert [r.job_id for r in report.redispatched] == [first]
    assert report.queued_waiting == 1
    assert jobs.store.get(later).redispatches == 0


def test_a_message_a_worker_holds_unacked_is_left_alone(
    jobs: JobClient, broker: redis.Redis
) -> None:
    handle = jobs.submit(AGENT, {"topic": "t"})
    with jobs.app.connection_for_read() as conn:
        queue = conn.SimpleQueue(Queue("agents", Exchange("agents"), routing_key="agents"))
        message = queue.get(timeout=10)  # popped, not acked: kombu keeps it in ``unacked``
        try:
            assert jobs.redis.llen(_queue_key(jobs)) == 0
            assert handle.job_id in BrokerView(jobs.settings, broker).held_jobs()
            report = _sweeper(jobs, broker, after_s=3600).sweep()
            assert report.redispatched == []
            assert report.queued_waiting == 1
        finally:
            message.ack()
            queue.close()
    # acked without the job ever starting: now it is lost, and found
    assert [r.job_id for r in _sweeper(jobs, broker, after_s=3600).sweep().redispatched] == [
        handle.job_id
    ]


def test_running_job_past_the_hard_limit_is_redispatched(
    jobs: JobClient, broker: redis.Redis
) -> None:
    handle = jobs.submit(AGENT, {"topic": "t"})
    _lose_next_message(jobs)
    assert jobs.store.mark_running(handle.job_id, worker="dead", delivery=1) == "running"
    threshold = jobs.settings.job_time_limit_s + jobs.settings.sweep_grace_s
    report = _sweeper(jobs, broker, after_s=threshold - 2).sweep()
    assert report.redispatched == []
    assert report.running_checked == 0

    report = _sweeper(jobs, broker, after_s=threshold + 2).sweep()
    assert [(r.state, r.reason) for r in report.redispatched] == [
        ("running", "running_past_time_limit")
    ]
    assert report.redispatched[0].threshold_s == threshold
    record = jobs.store.get(handle.job_id)
    assert record.state == "queued"
    assert jobs.store.state_sizes()["running"] == 0
    assert _queued_task_ids(jobs) == [task_id(handle.job_id, record.dispatch)]


def test_running_rule_off_leaves_running_jobs(jobs: JobClient, broker: redis.Redis) -> None:
    handle = jobs.submit(AGENT, {"topic": "t"})
    _lose_next_message(jobs)
    jobs.store.mark_running(handle.job_id, worker="w", delivery=1)
    sweeper = JobSweeper(jobs, broker, clock=lambda: time.time() + 86_400, running_rule=False)
    assert sweeper.sweep().redispatched == []
    assert jobs.store.get(handle.job_id).state == "running"


def test_redispatch_is_a_compare_and_set(jobs: JobClient) -> None:
    handle = jobs.submit(AGENT, {"topic": "t"})
    stale = jobs.store.get(handle.job_id)
    assert jobs.store.mark_running(handle.job_id, worker="w", delivery=1) == "running"
    assert jobs.store.redispatch(stale, now_ms=stale.updated_at_ms + 1, reason="x") == 0
    record = jobs.store.get(handle.job_id)
    assert (record.state, record.dispatch, record.redispatches) == ("running", stale.dispatch, 0)


def test_a_superseded_dispatch_cannot_start(jobs: JobClient) -> None:
    handle = jobs.submit(AGENT, {"topic": "t"})
    old = jobs.store.get(handle.job_id)
    new = jobs.store.redispatch(old, now_ms=old.updated_at_ms + 1, reason="test")
    assert new > old.dispatch
    start = jobs.store.mark_running
    assert start(handle.job_id, worker="w", delivery=1, dispatch=old.dispatch) == "superseded"
    assert start(handle.job_id, worker="w", delivery=1, dispatch=new) == "running"


def test_dry_run_changes_nothing(jobs: JobClient, broker: redis.Redis) -> None:
    handle = jobs.submit(AGENT, {"topic": "t"})
    _lose_next_message(jobs)
    report = _sweeper(jobs, broker, after_s=60).sweep(dry_run=True)
    assert [(r.job_id, r.dispatch) for r in report.redispatched] == [(handle.job_id, None)]
    assert jobs.store.get(handle.job_id).redispatches == 0
    assert jobs.redis.llen(_queue_key(jobs)) == 0


def test_one_sweeper_per_interval_holds_the_lease(jobs: JobClient, broker: redis.Redis) -> None:
    a, b = JobSweeper(jobs, broker), JobSweeper(jobs, broker)
    assert a.try_lease("worker-a")
    assert not b.try_lease("worker-b")
    assert not a.try_lease("worker-a")


def test_a_redis_outage_is_an_error_not_an_empty_sweep(jobs: JobClient) -> None:
    dead = redis.Redis(port=1, socket_connect_timeout=0.2)
    with (
        JobClient(jobs.settings, redis_client=dead) as offline,
        pytest.raises(StateUnavailable, match="Redis did not answer"),
    ):
        JobSweeper(offline, dead).sweep()


# --- real worker processes -----------------------------------------------------------------


@pytest.fixture
def sweeping_fleet(
    tmp_path: Path, redis_url: str, celery_workers: CeleryWorkers
) -> Iterator[Fleet]:
    """Workers sweep every 0.2 s with a 1 s grace."""
    yield from make_fleet(
        tmp_path,
        redis_url,
        celery_workers,
        FLEET_SWEEP_INTERVAL_S="0.2",
        FLEET_SWEEP_GRACE_S="1",
    )


@pytest.mark.slow
def test_worker_sweeper_recovers_a_job_whose_message_was_lost(sweeping_fleet: Fleet) -> None:
    fleet = sweeping_fleet
    handle = fleet.jobs.submit(AGENT, {"topic": "lost"})
    _lose_next_message(fleet.jobs)
    fleet.workers.start(1)
    record = fleet.wait_all([handle.job_id], timeout_s=60)[0]
    assert record.state == "succeeded"
    assert (record.redispatches, record.sweep_reason) == (1, "queued_message_lost")
    assert record.deliveries == 1
    assert fleet.requests() == 1
    log = fleet.workers.workers[0].log()
    assert "job re-dispatched by the sweeper" in log
    assert f"job_id={handle.job_id}" in log


@pytest.mark.slow
def test_a_superseded_message_is_acked_without_running(sweeping_fleet: Fleet) -> None:
    """Two messages of one job (the sweeper re-published it while the first still waited):
    only the newest dispatch runs, once."""
    fleet = sweeping_fleet
    handle = fleet.jobs.submit(AGENT, {"topic": "twice"})
    old = fleet.jobs.store.get(handle.job_id)
    new = fleet.jobs.store.redispatch(old, now_ms=old.updated_at_ms + 1, reason="test")
    fleet.jobs.publish(AgentJob.model_validate(old.job), new)
    fleet.workers.start(1)
    record = fleet.wait_all([handle.job_id])[0]
    wait_until(fleet.broker_idle, timeout_s=30, message="every message consumed")
    assert record.state == "succeeded"
    assert record.deliveries == 1
    assert fleet.requests() == 1
    log = fleet.workers.workers[0].log()
    assert f"superseded message acked without running job_id={handle.job_id}" in log


@pytest.mark.slow
def test_fleet_jobs_sweep_cli(sweeping_fleet: Fleet) -> None:
    fleet = sweeping_fleet  # no worker runs: only the command sweeps (grace 1 s)
    handle = fleet.jobs.submit(AGENT, {"topic": "t"})
    _lose_next_message(fleet.jobs)
    wait_until(
        lambda: json.loads(cli(fleet, "jobs", "sweep", "--dry-run", "--json").stdout)[
            "redispatched"
        ],
        timeout_s=30,
        message="job idle past the grace period",
    )
    out = cli(fleet, "jobs", "sweep", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert [r["job_id"] for r in report["redispatched"]] == [handle.job_id]
    assert fleet.jobs.store.get(handle.job_id).redispatches == 1
