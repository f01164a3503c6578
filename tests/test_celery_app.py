"""The Celery app factory: protective settings, lazy ``-A workers.app`` resolution, and a real
worker that refuses pickle messages."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile

import pytest
from celery.app.utils import find_app
from kombu import Connection, Exchange

from fleet.jobs import TASK_NAME, AgentJob, JobClient
from fleet.settings import FleetSettings
from fleet.testing import wait_until
from fleet.testing.celery_workers import CeleryWorkers
from workers.app import create_app, transport_options
from workers.policy import retry_countdown_s


def test_factory_applies_protective_settings() -> None:
    settings = FleetSettings.load(
        redis_url="redis://127.0.0.1:6399/2",
        namespace="ns1",
        visibility_timeout_s=900,
        job_soft_time_limit_s=100,
        job_time_limit_s=120,
    )
    conf = create_app(settings).conf
    assert conf.task_serializer == "json"
    assert conf.result_serializer == "json"
    assert list(conf.accept_content) == ["json"]
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1
    assert conf.task_ignore_result is True
    assert conf.broker_connection_retry_on_startup is True
    assert conf.broker_url == "redis://127.0.0.1:6399/2"
    assert conf.broker_transport_options["visibility_timeout"] == 900
    assert conf.result_backend_transport_options["visibility_timeout"] == 900
    assert conf.broker_transport_options["global_keyprefix"] == "ns1:celery:"
    assert (conf.task_soft_time_limit, conf.task_time_limit) == (100, 120)
    assert conf.task_default_queue == "agents"
    assert {(q.name, q.routing_key) for q in conf.task_queues} == {
        ("agents", "agents"),
        ("escalation", "escalation"),
    }
    assert transport_options(settings) == conf.broker_transport_options


def test_retry_countdown_stays_below_visibility_timeout() -> None:
    settings = FleetSettings.load(
        visibility_timeout_s=120, job_soft_time_limit_s=50, job_time_limit_s=60
    )
    assert retry_countdown_s(settings, 2.5) == 2.5
    assert retry_countdown_s(settings, None) == 5.0
    assert retry_countdown_s(settings, 0.0) == 0.5
    assert retry_countdown_s(settings, 10_000) == 59  # 120 - 60 - 1: countdown + run < vt


def test_module_builds_no_app_at_import_and_celery_finds_it() -> None:
    code = (
        "import workers.app as m; assert not m._lazy, 'app built at import';"
        "from celery.app.utils import find_app; a = find_app('workers.app');"
        "assert m._lazy and a is m._lazy[0];"
        "print(a.conf.broker_transport_options['global_keyprefix'])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={"FLEET_NAMESPACE": "fromenv", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "fromenv:celery:"
    assert TASK_NAME in find_app("workers.app").tasks


@pytest.mark.docker
@pytest.mark.slow
def test_worker_refuses_pickle_and_runs_nothing(
    fleet_settings: FleetSettings, celery_workers: CeleryWorkers
) -> None:
    celery_workers.queues = "agents,escalation"
    celery_workers.start(1)
    with JobClient(fleet_settings) as jobs:
        job = AgentJob(agent="research.research", task_type="data_collection", payload={})
        jobs.store.create(job)  # a record, but the only message is a pickle one
        with Connection(
            fleet_settings.redis_url, transport_options=transport_options(fleet_settings)
        ) as conn:
            conn.Producer().publish(
                [[job.model_dump(mode="json")], {}, {}],
                exchange=Exchange("agents"),
                routing_key="agents",
                headers={"task": TASK_NAME, "id": "pickled-1", "lang": "py"},
                serializer="pickle",
            )
        wait_until(
            lambda: "ContentDisallowed" in celery_workers.workers[0].log(),
            timeout_s=30,
            message="pickle refused in the worker log",
        )
        assert jobs.store.get(job.job_id).state == "queued"  # never ran
        assert jobs.store.get(job.job_id).deliveries == 0


@pytest.mark.docker
@pytest.mark.slow
def test_fleet_worker_command_starts_a_consuming_worker(fleet_settings: FleetSettings) -> None:
    env = {
        **os.environ,
        "FLEET_REDIS_URL": fleet_settings.redis_url,
        "FLEET_NAMESPACE": fleet_settings.namespace,
        "PYTHONUNBUFFERED": "1",
    }
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", "from fleet.cli import main; main()", "worker", "-c", "1",
             "--without-heartbeat", "-n", "cli@fleet-test"],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )  # fmt: skip

        def output() -> str:
            log.seek(0)
            return log.read().decode(errors="replace")

        try:
            wait_until(lambda: " ready." in output(), timeout_s=60, message="fleet worker ready")
            text = output()
            assert ".> agents" in text
            assert ".> escalation" in text
            assert "fleet.run_agent_job" in text
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
