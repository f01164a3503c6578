"""End to end on real parts: Celery worker processes, Redis, simulated providers over HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fleet.escalation import EscalationQueue
from fleet.jobs import AgentJob, JobClient, next_job_id
from fleet.jobstore import JobRecord
from fleet.llm import FleetClient
from fleet.local import write_local_registry
from fleet.providers.simulated import SimControl, SimulatedProvider
from fleet.settings import FleetSettings
from fleet.testing import WaitTimeout, wait_until
from fleet.testing.celery_workers import CeleryWorkers
from tests.llm_fixtures import FAST_BREAKER
from workers.agents import SEO_PIPELINE

pytestmark = [pytest.mark.docker, pytest.mark.slow]

QUEUES = "agents,escalation"


@dataclass
class Fleet:
    """Settings, worker env, sim controls, workers and a job client for one test."""

    settings: FleetSettings
    env: dict[str, str]
    primary: SimControl
    backup: SimControl
    workers: CeleryWorkers
    jobs: JobClient

    def requests(self) -> int:
        """Requests both simulated providers received."""
        return int(self.primary.stats()["total_requests"]) + int(
            self.backup.stats()["total_requests"]
        )

    def wait_all(self, ids: list[str], timeout_s: float = 60.0) -> list[JobRecord]:
        """Wait until every job is terminal; return their records."""

        def done() -> list[JobRecord] | None:
            records = [self.jobs.store.get(i) for i in ids]
            return records if all(r.terminal for r in records) else None

        try:
            return wait_until(done, timeout_s=timeout_s, interval_s=0.1, message="jobs terminal")
        except WaitTimeout as exc:
            raise WaitTimeout(f"{exc}\n{self.explain_stuck(ids)}") from None

    def explain_stuck(self, ids: list[str]) -> str:
        """Where each non-terminal job is: its record, and whether the broker holds it."""
        r, prefix = self.jobs.redis, f"{self.settings.namespace}:celery:"
        queued = b"".join(r.lrange(prefix + "agents", 0, -1)).decode(errors="replace")
        unacked = " ".join(str(v) for v in r.hvals(prefix + "unacked"))
        lines = [
            f"mutex ttl={r.ttl(prefix + 'unacked_mutex')} "
            f"unacked={r.hlen(prefix + 'unacked')} queue={r.llen(prefix + 'agents')}"
        ]
        for job_id in ids:
            rec = self.jobs.store.get(job_id)
            if not rec.terminal:
                lines.append(
                    f"{job_id} state={rec.state} deliveries={rec.deliveries} "
                    f"worker={rec.worker} updated_at_ms={rec.updated_at_ms} "
                    f"in_queue={job_id in queued} in_unacked={job_id in unacked}"
                )
        for w in self.workers.workers:
            lines.append(f"--- {w.name} log tail\n{w.log()[-1500:]}")
        return "\n".join(lines)

    def broker_idle(self) -> bool:
        """No message waiting in the agents queue and none held unacked by a worker."""
        r, prefix = self.jobs.redis, f"{self.settings.namespace}:celery:"
        waiting = sum(int(r.llen(k)) for k in r.scan_iter(match=prefix + "agents*"))
        return waiting == 0 and int(r.hlen(prefix + "unacked")) == 0


def make_fleet(
    tmp_path: Path, redis_url: str, workers: CeleryWorkers, **extra_env: str
) -> Iterator[Fleet]:
    """Two simulated providers, a registry routed to them, settings and worker env."""
    with (
        SimulatedProvider(port=0, control_port=0, name="sim-primary") as primary,
        SimulatedProvider(port=0, control_port=0, name="sim-backup") as backup,
    ):
        registry = write_local_registry(
            tmp_path / "registry.toml",
            primary_port=primary.port,
            backup_port=backup.port,
            breaker=FAST_BREAKER,
            sim_open_base_ms=300,
        )
        env = {
            "FLEET_REDIS_URL": redis_url,
            "FLEET_NAMESPACE": "test",
            "FLEET_REGISTRY_PATH": str(registry),
            **extra_env,
        }
        settings = FleetSettings.load(
            **{k.removeprefix("FLEET_").lower(): v for k, v in env.items()}
        )
        workers.env.update(env)
        workers.queues = QUEUES
        with JobClient(settings) as jobs:
            yield Fleet(
                settings,
                env,
                SimControl(primary.port, primary.control_port),
                SimControl(backup.port, backup.control_port),
                workers,
                jobs,
            )


@pytest.fixture
def fleet(tmp_path: Path, redis_url: str, celery_workers: CeleryWorkers) -> Iterator[Fleet]:
    yield from make_fleet(tmp_path, redis_url, celery_workers)


@pytest.fixture
def capped_fleet(tmp_path: Path, redis_url: str, celery_workers: CeleryWorkers) -> Iterator[Fleet]:
    """A fleet whose jobs get no redelivery at all (FLEET_MAX_REDELIVERIES=0)."""
    yield from make_fleet(tmp_path, redis_url, celery_workers, FLEET_MAX_REDELIVERIES="0")


def cli(fleet: Fleet, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``fleet ARGS`` in a separate process with the fleet's settings."""
    return subprocess.run(
        [sys.executable, "-c", "from fleet.cli import main; main()", *args],
        env={**os.environ, **fleet.env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_jobs_from_another_process_run_on_two_workers(fleet: Fleet) -> None:
    fleet.workers.start(2)
    out = cli(
        fleet, "submit", "research.research", "--json-payload", '{"topic": "x"}', "--repeat", "20"
    )
    assert out.returncode == 0, out.stderr
    ids = out.stdout.split()
    assert len(ids) == 20
    records = fleet.wait_all(ids)
    assert {r.state for r in records} == {"succeeded"}
    assert len({r.worker for r in records}) >= 2, "both worker processes should have run jobs"
    assert all(r.result["findings"] and r.cost_usd > 0 for r in records)
    assert all(r.history and r.history[-1].outcome == "success" for r in records)
    assert fleet.requests() == 20

    # a redelivered copy of a finished job is acked without running (nor paying) again
    fleet.jobs.enqueue(AgentJob.model_validate(fleet.jobs.store.get(ids[0]).job))
    wait_until(fleet.broker_idle, timeout_s=30, message="duplicate consumed")
    assert fleet.requests() == 20
    counts = fleet.jobs.store.counts()
    assert counts["submitted"] == counts["succeeded"] == 20

    shown = cli(fleet, "jobs", "show", ids[0], "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["state"] == "succeeded"
    listed = cli(fleet, "jobs", "list", "--state", "succeeded", "--json")
    assert len(listed.stdout.splitlines()) == 20

    waited = cli(
        fleet, "submit", "triage.classify", "--json-payload", '{"text": "a"}', "--repeat", "3",
        "--wait", "--timeout-s", "60",
    )  # fmt: skip
    assert waited.returncode == 0, waited.stderr
    assert "succeeded=3" in waited.stderr


def test_seo_pipeline_end_to_end(fleet: Fleet) -> None:
    cancelled = fleet.jobs.submit("research.research", {"topic": "never"}).job_id
    assert fleet.jobs.cancel(cancelled)
    fleet.workers.start(2)
    run = fleet.jobs.submit_pipeline(
        SEO_PIPELINE, {"domain": "example.com", "keywords": ["llm", "breaker"]}
    )
    last = run.wait(timeout_s=60)
    assert last.state == "succeeded", last.error
    records = [h.status() for h in run.jobs]
    assert [r.agent for r in records] == SEO_PIPELINE
    assert [r.task_type for r in records] == [
        "data_collection",
        "content_scraping",
        "gap_analysis",
        "recommendations",
    ]
    assert {r.workflow_id for r in records} == {run.workflow_id}
    final = run.result()
    for field in ("collected", "scraped", "gaps", "recommendations"):
        assert final[field], field
    assert final["domain"] == "example.com"
    wait_until(fleet.broker_idle, timeout_s=30, message="cancelled job's message consumed")
    assert fleet.jobs.store.get(cancelled).state == "cancelled"
    assert fleet.requests() == 4  # the cancelled job never called a model


def test_pipeline_step_recovers_a_lost_next_step(fleet: Fleet) -> None:
    """A step settled but its process died before queueing the next step: the redelivered
    message of the settled step queues it (once), so the pipeline does not stall."""
    fleet.workers.start(1)
    parent = AgentJob(
        agent="research.research",
        task_type="data_collection",
        payload={"topic": "t"},
        workflow_id="w" * 32,
        next_agents=("research.summary",),
    )
    fleet.jobs.store.create(parent)
    fleet.jobs.store.mark_running(parent.job_id, worker="dead", delivery=1)
    fleet.jobs.store.finish(parent.job_id, "succeeded", result={"topic": "t", "findings": "f"})
    fleet.jobs.enqueue(parent)  # the unacked message, redelivered
    fleet.jobs.enqueue(parent)  # and once more: still one next step
    child = next_job_id(parent.job_id)
    wait_until(lambda: fleet.jobs.store.state(child) is not None, timeout_s=30)
    record = fleet.wait_all([child])[0]
    assert record.state == "succeeded"
    assert record.workflow_id == "w" * 32
    assert record.result["summary"]
    wait_until(fleet.broker_idle, timeout_s=30, message="duplicates consumed")
    assert fleet.requests() == 1
    assert fleet.jobs.store.counts()["submitted"] == 2


def _recover(fleet: Fleet, task_types: list[str]) -> None:
    """Both sims healthy, and every breaker the jobs need closed again."""
    fleet.primary.set_mode("healthy")
    fleet.backup.set_mode("healthy")
    with FleetClient(fleet.settings) as client:

        def call_ok() -> bool:
            try:
                for t in task_types:
                    client.llm_call(t, [{"role": "user", "content": "ping"}])
            except Exception:
                return False
            return True

        wait_until(call_ok, timeout_s=30, interval_s=0.2, message="breakers closed")


def test_each_policy_with_both_providers_down(fleet: Fleet) -> None:
    fleet.workers.concurrency = 2
    fleet.workers.start(1)
    fleet.primary.set_mode("down")
    fleet.backup.set_mode("down")
    jobs = fleet.jobs
    escalate = jobs.submit("research.research", {"topic": "x"}).job_id
    degrade = jobs.submit("triage.classify", {"text": "hello"}).job_id
    fail = jobs.submit("extract.fields", {"text": "a=1"}).job_id
    retry = jobs.submit("seo.recommendations", {"domain": "a.com", "gaps": "g"}).job_id
    by_id = {r.job_id: r for r in fleet.wait_all([escalate, degrade, fail, retry], 90)}

    esc = by_id[escalate]
    assert (esc.state, esc.policy, esc.policy_reason) == (
        "escalated",
        "escalate",
        "all_routes_failed",
    )
    assert esc.history and {a.provider for a in esc.history} <= {"sim-primary", "sim-backup"}

    deg = by_id[degrade]
    assert (deg.state, deg.degraded, deg.result) == ("succeeded", True, "unclassified")
    assert deg.policy == "degrade" and deg.history

    fl = by_id[fail]
    assert (fl.state, fl.policy, fl.policy_reason) == ("failed", "fail", "all_routes_failed")
    assert "all routes failed" in (fl.error or "") and fl.history

    rl = by_id[retry]
    assert (rl.state, rl.policy, rl.policy_reason) == (
        "escalated",
        "retry_later",
        "retry_later_exhausted",
    )
    assert rl.retry_later_count == 4  # three re-enqueues, the fourth failure escalates

    queue = EscalationQueue(fleet.settings, jobs.redis)
    entries = {e.job_id: e for e in queue.list()}
    assert set(entries) == {escalate, retry}
    assert entries[escalate].attempts == esc.history
    counts = jobs.store.counts()
    assert counts == {"submitted": 4, "succeeded": 1, "failed": 1, "escalated": 2, "cancelled": 0}

    # after recovery, requeued escalations complete with a fresh attempt budget
    _recover(fleet, ["data_collection", "recommendations"])
    for entry in entries.values():
        queue.requeue(entry.id, actor="test")
    again = {r.job_id: r for r in fleet.wait_all([escalate, retry], 60)}
    assert again[escalate].state == "succeeded"
    assert again[retry].state == "succeeded"
    assert again[retry].result["recommendations"]
    assert jobs.store.counts()["escalated"] == 0


def test_redelivery_cap_escalates_a_job_whose_worker_dies(capped_fleet: Fleet) -> None:
    fleet = capped_fleet
    fleet.workers.start(1)
    fleet.primary.set_mode("hang")
    job_id = fleet.jobs.submit("research.research", {"topic": "x"}).job_id
    running = wait_until(
        lambda: (r := fleet.jobs.store.get(job_id)).state == "running" and r,
        timeout_s=30,
        message="job running",
    )
    assert running.worker is not None
    wait_until(lambda: fleet.primary.stats()["total_requests"] == 1, message="call sent")
    os.kill(int(running.worker.rsplit(":", 1)[1]), signal.SIGKILL)  # the pool process
    record = fleet.wait_all([job_id], 60)[0]
    assert (record.state, record.policy_reason) == ("escalated", "redelivery_cap")
    assert record.deliveries == 1
    assert "delivered 2 times" in (record.error or "")
    entries = EscalationQueue(fleet.settings, fleet.jobs.redis).list()
    assert [(e.job_id, e.reason) for e in entries] == [(job_id, "redelivery_cap")]
    fleet.primary.set_mode("healthy")
    assert fleet.requests() == 1  # the redelivery was escalated, not called again
