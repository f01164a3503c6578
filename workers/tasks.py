"""``fleet.run_agent_job``: run one agent job under the job store's state machine.

Per delivery: ack at once a job that is already terminal, or a message superseded by a newer
dispatch of the job (the sweeper re-published it: :mod:`fleet.sweeper`); count the delivery
(past the cap: escalate, reason ``redelivery_cap``); mark running; run the agent inside a job
scope (so every ``llm_call`` gets a step number and the step cache answers steps already paid
for); settle the job: succeeded (queue the next pipeline step first), or apply the task
type's local-failure policy (:mod:`workers.policy`). A Redis outage while doing so rejects the
message back to the queue (never acked as done, never read as success).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from typing import Any

import redis
from celery import Celery, Task
from celery.exceptions import Reject, SoftTimeLimitExceeded
from celery.signals import worker_process_init
from pydantic import BaseModel, ValidationError

from fleet.context import JobContext, job_scope
from fleet.dispatch import parse_task_id
from fleet.errors import AllRoutesFailed, CallerError, StateUnavailable
from fleet.jobs import TASK_NAME, AgentJob, JobClient
from fleet.jobstore import TERMINAL_STATES
from fleet.redis_client import make_redis
from fleet.settings import FleetSettings, default_worker_id
from fleet.stepcache import StepCacheMiddleware
from workers import policy
from workers.catalog import load_catalog
from workers.redelivery import count_delivery, over_cap
from workers.runtime import WorkerRuntime

log = logging.getLogger(__name__)

RUNTIME_RETRY_S = 5


class RuntimeHolder:
    """One :class:`WorkerRuntime` per OS process (rebuilt after a fork)."""

    def __init__(self, settings: FleetSettings, app: Celery) -> None:
        self.settings = settings
        self.app = app
        self._pid = 0
        self._runtime: WorkerRuntime | None = None

    def get(self) -> WorkerRuntime:
        """This process's runtime, built (and its FleetClient installed) on first use."""
        if self._runtime is None or self._pid != os.getpid():
            settings = self.settings
            if "FLEET_WORKER_ID" not in os.environ:  # name this pool process, not the parent
                settings = settings.model_copy(update={"worker_id": default_worker_id()})
            self._runtime = build_runtime(settings, self.app)
            self._pid = os.getpid()
        return self._runtime

    def on_process_init(self, **_: Any) -> None:
        """worker_process_init handler: build the runtime in each fresh pool process.

        A failure is logged, not raised: the pool process stays up and each job retries
        building the runtime (and is retried itself) until the cause is fixed.
        """
        try:
            self.get()
        except Exception:
            log.exception(
                "worker runtime not ready; jobs will retry worker=%s", self.settings.worker_id
            )


def build_runtime(settings: FleetSettings, app: Celery) -> WorkerRuntime:
    """Redis client, job client, agents, registry and a default FleetClient with step cache."""
    from breaker_service.listeners import BreakerListener  # noqa: PLC0415 - worker only
    from fleet.escalation import EscalationQueue  # noqa: PLC0415 - worker only
    from fleet.llm import FleetClient, set_default_client  # noqa: PLC0415 - heavy, worker only
    from fleet.registry import load_registry  # noqa: PLC0415 - worker only
    from fleet.replay import AutoReplayListener, registry_auto_replay  # noqa: PLC0415
    from fleet.sentry import SentryBreakerListener, init_sentry  # noqa: PLC0415

    client = make_redis(settings)
    registry = load_registry(settings.registry_path)
    escalations = EscalationQueue(
        settings, client, auto_replay_enabled=registry_auto_replay(registry)
    )
    sentry_on = init_sentry(settings)
    listeners: list[BreakerListener] = [AutoReplayListener(escalations)]
    if sentry_on:
        listeners.append(SentryBreakerListener())
    fleet_client = FleetClient(
        settings,
        registry=registry,
        redis=client,
        middleware=[StepCacheMiddleware(settings, client)],
        breaker_listeners=listeners,
    )
    set_default_client(fleet_client)
    jobs = JobClient(
        settings, redis_client=client, catalog=load_catalog(settings), app=app, registry=registry
    )
    log.info(
        "worker runtime ready worker=%s agents=%s sentry=%s auto_replay=on",
        settings.worker_id,
        jobs.catalog.names(),
        sentry_on,
    )
    return WorkerRuntime(
        settings=settings, redis=client, jobs=jobs, registry=registry, _escalations=escalations
    )


def _jsonable(output: Any) -> Any:
    if isinstance(output, BaseModel):
        output = output.model_dump(mode="json")
    json.dumps(output)
    return output


def _run_agent(rt: WorkerRuntime, job: AgentJob) -> Callable[[], Any] | None:
    """Resolve the agent and its payload; settle the job and return None when impossible."""
    spec = rt.jobs.catalog.get(job.agent)
    if spec is None:
        policy.escalate(
            rt, job, reason="unknown_agent", detail=f"agent {job.agent!r} is not loaded here"
        )
        return None
    try:
        payload = spec.payload_model.model_validate(job.payload)
    except ValidationError as exc:
        policy.fail(rt, job, reason="bad_payload", detail=f"payload invalid: {exc}")
        return None
    return lambda: spec.fn(payload)


def _admit(rt: WorkerRuntime, job: AgentJob, dispatch: int | None) -> str | None:
    """Checks before running a delivery; returns why not to run it, or None to run it."""
    store = rt.jobs.store
    state, current = store.admission(job.job_id)
    if state is None:
        store.create(job)
    elif state in TERMINAL_STATES:
        log.info(
            "job already terminal, acked without running job_id=%s state=%s", job.job_id, state
        )
        if state == "succeeded" and job.next_agents:
            # the previous delivery may have died between settling and queueing the next step
            rt.jobs.enqueue_next(job, store.get(job.job_id).result)
        return "duplicate"
    guard = dispatch if dispatch is not None and current else None
    if guard is not None and guard != current:
        log.info(
            "superseded message acked without running job_id=%s dispatch=%s current=%s",
            job.job_id,
            dispatch,
            current,
        )
        return "superseded"
    delivery = count_delivery(rt.settings, rt.redis, job.job_id)
    if over_cap(rt.settings, delivery):
        detail = f"delivered {delivery} times; cap is 1 + {rt.settings.max_redeliveries}"
        policy.escalate(rt, job, reason="redelivery_cap", detail=detail)
        return "redelivery_cap"
    started = store.mark_running(
        job.job_id, worker=rt.settings.worker_id, delivery=delivery, dispatch=guard
    )
    if started == "superseded":
        log.info("superseded message acked without running job_id=%s", job.job_id)
        return "superseded"
    return None if started == "running" else "duplicate"


def _settle_error(rt: WorkerRuntime, job: AgentJob, exc: BaseException) -> str:
    if isinstance(exc, AllRoutesFailed):
        return policy.apply_local_failure(rt, job, exc)
    if isinstance(exc, CallerError):
        policy.fail(rt, job, reason="caller_error", detail=str(exc), attempts=exc.attempts)
    elif isinstance(exc, SoftTimeLimitExceeded):
        limit = rt.settings.job_soft_time_limit_s
        policy.fail(rt, job, reason="time_limit", detail=f"soft time limit {limit}s exceeded")
    else:
        policy.fail(rt, job, reason="agent_error", detail=f"{type(exc).__name__}: {exc}")
    return "failed"


def execute_job(rt: WorkerRuntime, data: dict[str, Any], dispatch: int | None = None) -> str:
    """Run one delivery of a job; returns what happened (for logs and tests).

    ``dispatch`` is the message's dispatch number (from its task id); None for messages
    published without one, which are not checked for being superseded.
    """
    try:
        job = AgentJob.model_validate(data)
    except ValidationError as exc:
        log.error("dropping malformed job message error=%s", exc)
        return "malformed"
    refused = _admit(rt, job, dispatch)
    if refused is not None:
        return refused
    run = _run_agent(rt, job)
    if run is None:
        return "refused"
    ctx = JobContext(job.job_id, job.session_id, job.workflow_id, job.task_type)
    with job_scope(ctx):  # settled inside the scope: the history reuses the steps it holds
        try:
            output = _jsonable(run())
        except StateUnavailable:
            raise
        except Exception as exc:
            return _settle_error(rt, job, exc)
        if policy.succeed(rt, job, output):
            rt.jobs.enqueue_next(job, output)
    return "succeeded"


def register_tasks(app: Celery, settings: FleetSettings) -> None:
    """Register ``fleet.run_agent_job`` on ``app`` and the per-process runtime hook."""
    holder = RuntimeHolder(settings, app)
    worker_process_init.connect(holder.on_process_init, weak=False)

    @app.task(name=TASK_NAME, bind=True, shared=False, acks_late=True, reject_on_worker_lost=True)
    def run_agent_job(self: Task[Any, Any], job: dict[str, Any]) -> str:
        """Run one agent job (the message body is the AgentJob JSON)."""
        try:
            _, dispatch = parse_task_id(self.request.id)
            return execute_job(holder.get(), job, dispatch)
        except (StateUnavailable, redis.RedisError) as exc:
            log.error(
                "state unavailable, job back to the queue job_id=%s error=%s",
                job.get("job_id"),
                exc,
            )
            raise Reject(str(exc), requeue=True) from exc
        except Exception as exc:  # our own runtime failed (e.g. registry invalid): keep the job
            log.exception(
                "job delivery failed outside the agent, retrying job_id=%s countdown_s=%s",
                job.get("job_id"),
                RUNTIME_RETRY_S,
            )
            raise self.retry(exc=exc, countdown=RUNTIME_RETRY_S, max_retries=None) from exc
