"""submit / submit_pipeline / requeue_job on a real Redis broker (no worker): validation first,
nothing queued on refusal, one record + one message per accepted job."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
from pydantic import BaseModel, ConfigDict

from fleet.errors import JobFailed, JobNotFound, JobPending, SubmitError
from fleet.jobs import MAX_PAYLOAD_BYTES, AgentJob, JobClient, next_job_id, requeue_job, submit
from fleet.settings import FleetSettings
from workers.agents import SEO_PIPELINE
from workers.catalog import AgentCatalog, agent, load_catalog
from workers.redelivery import count_delivery, deliveries_key

pytestmark = pytest.mark.docker


def queued_messages(client: JobClient, queue: str = "agents") -> int:
    """Messages waiting in the broker for ``queue`` (every priority sub-list)."""
    prefix = f"{client.settings.namespace}:celery:{queue}"
    return sum(int(client.redis.llen(k)) for k in client.redis.scan_iter(match=prefix + "*"))


@pytest.fixture
def jobs(fleet_settings: FleetSettings) -> Iterator[JobClient]:
    with JobClient(fleet_settings) as client:
        yield client


def assert_nothing_queued(client: JobClient) -> None:
    assert queued_messages(client) == 0
    assert client.store.counts()["submitted"] == 0
    assert client.store.list() == []


@pytest.mark.parametrize(
    ("agent_name", "payload", "field", "fix"),
    [
        ("no.such.agent", {"topic": "x"}, "agent: unknown agent", "known agents"),
        ("research.research", {"topik": "x"}, "payload.topic", "schema ResearchState"),
        ("research.research", {"topic": ""}, "payload.topic", "at least 1 character"),
        ("research.research", ["x"], "payload: expected a JSON object", "list"),
        ("research.research", {"topic": object()}, "payload: not JSON", "plain JSON"),
        (
            "research.research",
            {"topic": "x" * (MAX_PAYLOAD_BYTES + 1)},
            "payload:",
            "exceeds the 262144-byte limit",
        ),
    ],
)
def test_bad_input_is_refused_and_nothing_queued(
    jobs: JobClient, agent_name: str, payload: object, field: str, fix: str
) -> None:
    with pytest.raises(SubmitError) as info:
        jobs.submit(agent_name, payload)  # type: ignore[arg-type]
    assert field in str(info.value)
    assert fix in str(info.value)
    assert_nothing_queued(jobs)


def test_unknown_task_type_refused(fleet_settings: FleetSettings) -> None:
    class P(BaseModel):
        model_config = ConfigDict(extra="forbid")
        x: int

    catalog = AgentCatalog()
    agent("bad.tasktype", "no_such_task", payload_model=P, catalog=catalog)(lambda p: p.x)
    with JobClient(fleet_settings, catalog=catalog) as client:
        with pytest.raises(SubmitError, match=r"task_type: .*'no_such_task'.*registry"):
            client.submit("bad.tasktype", {"x": 1})
        assert_nothing_queued(client)


def test_bad_priority_names_the_field(jobs: JobClient) -> None:
    with pytest.raises(SubmitError, match="priority"):
        jobs.submit("research.research", {"topic": "x"}, priority=12)
    assert_nothing_queued(jobs)


def test_pipeline_with_an_unknown_later_step_is_refused(jobs: JobClient) -> None:
    with pytest.raises(SubmitError, match=r"agents\[2\]: unknown agent 'seo.nope'"):
        jobs.submit_pipeline(
            ["seo.data_collection", "seo.content_scraping", "seo.nope"], {"domain": "a.com"}
        )
    assert_nothing_queued(jobs)


def test_accepted_job_has_record_and_one_message(jobs: JobClient) -> None:
    handle = jobs.submit("research.research", {"topic": "breakers"}, session_id="s1")
    record = handle.status()
    assert record.state == "queued"
    assert record.task_type == "data_collection"
    assert record.session_id == "s1"
    assert queued_messages(jobs) == 1
    assert jobs.store.counts()["submitted"] == 1
    with pytest.raises(JobPending):
        handle.result()
    with pytest.raises(TimeoutError, match="still queued"):
        handle.wait(timeout_s=0.1)


def test_module_level_submit_uses_given_settings(fleet_settings: FleetSettings) -> None:
    import fleet

    assert fleet.submit is submit
    handle = fleet.submit("triage.classify", {"text": "hello"}, settings=fleet_settings)
    assert handle.status().task_type == "classification"


def test_pipeline_ids_are_known_up_front(jobs: JobClient) -> None:
    run = jobs.submit_pipeline(SEO_PIPELINE, {"domain": "example.com", "keywords": ["llm"]})
    ids = [h.job_id for h in run.jobs]
    assert len(ids) == 4
    assert ids[1] == next_job_id(ids[0])
    first = run.jobs[0].status()
    assert first.workflow_id == run.workflow_id
    assert first.job["next_agents"] == SEO_PIPELINE[1:]
    # only the first step is queued; later steps are queued by the worker on success
    assert queued_messages(jobs) == 1
    assert jobs.store.state(ids[1]) is None


def test_result_raises_for_failed_job(jobs: JobClient) -> None:
    handle = jobs.submit("research.research", {"topic": "x"})
    jobs.store.finish(handle.job_id, "failed", error="all routes failed")
    with pytest.raises(JobFailed, match="ended failed: all routes failed"):
        handle.result()


def test_requeue_job_resets_budget_and_queues_again(
    jobs: JobClient, fleet_settings: FleetSettings
) -> None:
    handle = jobs.submit("research.research", {"topic": "x"})
    job = handle.status().job
    for _ in range(5):
        count_delivery(fleet_settings, jobs.redis, handle.job_id)
    jobs.store.incr_field(handle.job_id, "retry_later_count")
    jobs.store.finish(handle.job_id, "escalated", error="redelivery cap")
    assert jobs.store.counts()["escalated"] == 1

    requeue_job(fleet_settings, job)

    record = handle.status()
    assert record.state == "queued"
    assert record.retry_later_count == 0
    assert record.requeues == 1
    assert jobs.redis.get(deliveries_key(fleet_settings, handle.job_id)) is None
    assert jobs.store.counts() == {
        "submitted": 1,
        "cancelled": 0,
        "escalated": 0,
        "failed": 0,
        "succeeded": 0,
    }
    assert queued_messages(jobs) == 2  # the original message plus the requeued one


def test_requeue_never_reopens_a_succeeded_job(
    jobs: JobClient, fleet_settings: FleetSettings
) -> None:
    handle = jobs.submit("research.research", {"topic": "x"})
    jobs.store.finish(handle.job_id, "succeeded", result={"ok": 1})
    requeue_job(fleet_settings, handle.status().job)
    assert handle.status().state == "succeeded"
    assert queued_messages(jobs) == 1


def test_requeue_of_a_running_job_changes_nothing(
    jobs: JobClient, fleet_settings: FleetSettings
) -> None:
    handle = jobs.submit("research.research", {"topic": "x"})
    assert count_delivery(fleet_settings, jobs.redis, handle.job_id) == 1
    jobs.store.mark_running(handle.job_id, worker="w", delivery=1)
    requeue_job(fleet_settings, handle.status().job)
    record = handle.status()
    assert (record.state, record.requeues) == ("running", 0)
    assert jobs.redis.get(deliveries_key(fleet_settings, handle.job_id)) == b"1"  # budget kept
    assert queued_messages(jobs) == 1


def test_agent_job_schema_is_strict() -> None:
    with pytest.raises(ValueError, match="extra"):
        AgentJob.model_validate({"agent": "a", "task_type": "t", "payload": {}, "surprise": 1})
    with pytest.raises(ValueError, match="job_id"):
        AgentJob(job_id="not-hex", agent="a", task_type="t", payload={})


def test_catalog_loads_from_settings_and_names_bad_module(fleet_settings: FleetSettings) -> None:
    assert "seo.recommendations" in load_catalog(fleet_settings).names()
    bad = fleet_settings.model_copy(update={"agent_modules": "workers.agents,nope.missing"})
    with pytest.raises(Exception, match="FLEET_AGENT_MODULES: cannot import agent module"):
        load_catalog(bad)


def test_cancel_only_queued_jobs(jobs: JobClient) -> None:
    a = jobs.submit("research.research", {"topic": "a"})
    b = jobs.submit("research.research", {"topic": "b"})
    jobs.store.mark_running(b.job_id, worker="w", delivery=1)
    assert jobs.cancel(a.job_id) is True
    assert jobs.cancel(a.job_id) is False
    assert jobs.cancel(b.job_id) is False
    assert a.status().state == "cancelled"
    assert jobs.store.counts()["cancelled"] == 1
    with pytest.raises(JobFailed, match="ended cancelled"):
        a.result()
    with pytest.raises(JobNotFound):
        jobs.cancel("f" * 32)


def _cli(settings: FleetSettings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FLEET_REDIS_URL": settings.redis_url, "FLEET_NAMESPACE": "test"}
    return subprocess.run(
        [sys.executable, "-c", "from fleet.cli import main; main()", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cli_refusal_exits_2_naming_the_field(jobs: JobClient) -> None:
    out = _cli(jobs.settings, "submit", "research.research", "--json-payload", '{"topik": 1}')
    assert out.returncode == 2
    assert "payload.topic" in out.stderr
    out = _cli(jobs.settings, "submit", "research.research", "--json-payload", "{nope")
    assert out.returncode == 2
    assert "--json-payload: not valid JSON" in out.stderr
    assert_nothing_queued(jobs)


def test_cli_show_list_cancel(jobs: JobClient) -> None:
    out = _cli(jobs.settings, "submit", "research.research", "--json-payload", '{"topic": "t"}')
    assert out.returncode == 0, out.stderr
    job_id = out.stdout.strip()
    assert jobs.store.state(job_id) == "queued"
    listed = _cli(jobs.settings, "jobs", "list", "--state", "queued", "--json")
    assert [json.loads(line)["job_id"] for line in listed.stdout.splitlines()] == [job_id]
    assert _cli(jobs.settings, "jobs", "cancel", job_id).returncode == 0
    assert _cli(jobs.settings, "jobs", "cancel", job_id).returncode == 1
    shown = _cli(jobs.settings, "jobs", "show", job_id)
    assert shown.returncode == 0 and "cancelled" in shown.stdout
    assert _cli(jobs.settings, "jobs", "show", "0" * 32).returncode == 1
    assert _cli(jobs.settings, "jobs", "list", "--state", "done").returncode == 2
