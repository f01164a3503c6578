"""Agent jobs: the ``AgentJob`` schema, ``submit``/``submit_pipeline`` and ``JobHandle``.

Everything is validated before anything is queued: an unknown agent, a task type the registry
does not know, a payload failing the agent's schema or over :data:`MAX_PAYLOAD_BYTES` raises
:class:`~fleet.errors.SubmitError` naming the field; then no record and no message exist.

Pipelines: ``submit_pipeline(["a", "b", "c"], payload)`` queues job ``a`` carrying the
remaining agents in ``next_agents``; when a step succeeds, the worker queues the next step with
the step's output as its payload. Every step is a job with its own record; the ids of later
steps are derived from the first one (``uuid5``), so a redelivered step queues the same next
job at most once and :class:`PipelineHandle` knows every id up front.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import redis
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fleet.dispatch import task_id
from fleet.errors import (
    ConfigError,
    JobFailed,
    JobNotFound,
    JobPending,
    SubmitError,
    UnknownTaskType,
)
from fleet.jobstore import TERMINAL_STATES, JobRecord, JobStore
from fleet.redis_client import make_redis
from fleet.settings import FleetSettings
from workers.catalog import AgentCatalog, AgentSpec, load_catalog
from workers.redelivery import reset_deliveries

if TYPE_CHECKING:
    from celery import Celery

    from fleet.registry import Registry

MAX_PAYLOAD_BYTES = 256 * 1024
TASK_NAME = "fleet.run_agent_job"
_PIPELINE_NS = uuid.UUID("6f1c2d1e-3a7b-4c55-9d0e-0a6f1e2b3c4d")


def _new_id() -> str:
    return uuid.uuid4().hex


class JobLimits(BaseModel):
    """Per-job limits carried with the job (enforced by budget middleware when installed)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_cost_usd: float | None = Field(None, ge=0, description="Spend cap of the job, USD.")
    max_tokens: int | None = Field(None, ge=1, description="Token cap of the job.")


class AgentJob(BaseModel):
    """One unit of work for one agent; the JSON of this model is the Celery message body.

    ``priority`` 0 (default, served first) to 9 (last) as Celery's Redis transport orders them.
    ``next_agents`` are the remaining steps of a pipeline (see :func:`submit_pipeline`).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    job_id: str = Field(default_factory=_new_id, pattern=r"^[0-9a-f]{32}$")
    agent: str = Field(min_length=1)
    task_type: str = Field(min_length=1)
    payload: dict[str, Any]
    session_id: str | None = None
    workflow_id: str | None = None
    priority: int = Field(0, ge=0, le=9)
    limits: JobLimits = JobLimits()
    metadata: dict[str, str] = {}
    queue: str = Field("agents", min_length=1)
    created_at_s: float = Field(default_factory=time.time)
    next_agents: tuple[str, ...] = ()


def next_job_id(job_id: str) -> str:
    """The id of the pipeline step that follows job ``job_id`` (deterministic)."""
    return uuid.uuid5(_PIPELINE_NS, job_id).hex


def _as_payload(output: Any) -> dict[str, Any]:
    if isinstance(output, BaseModel):
        output = output.model_dump(mode="json")
    return dict(output) if isinstance(output, Mapping) else {"input": output}


def _first_error(exc: ValidationError, prefix: str) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in (prefix, *err["loc"]) if p != "")
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


class JobHandle:
    """A submitted job: ask its state, wait for it, get its result."""

    def __init__(self, store: JobStore, job_id: str) -> None:
        self.store = store
        self.job_id = job_id

    def __repr__(self) -> str:
        return f"JobHandle({self.job_id!r})"

    def status(self) -> JobRecord:
        """The job's current record (state, attempts, cost, result or error, history)."""
        return self.store.get(self.job_id)

    def wait(self, timeout_s: float = 60.0, *, poll_s: float = 0.05) -> JobRecord:
        """Block until the job is terminal and return its record.

        Raises ``TimeoutError`` naming the job and its last state after ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        delay = poll_s
        while True:
            state = self.store.state(self.job_id)  # one HGET per poll; the record once settled
            if state is None:
                raise JobNotFound(f"no job with id {self.job_id!r}")
            if state in TERMINAL_STATES:
                return self.store.get(self.job_id)
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"job {self.job_id} still {state} after {timeout_s}s; "
                    "are workers consuming its queue?"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)

    def result(self) -> Any:
        """The job's result once succeeded (fallback output when ``degraded``).

        Raises :class:`~fleet.errors.JobFailed` for failed/escalated/cancelled jobs and
        :class:`~fleet.errors.JobPending` while the job is queued or running.
        """
        record = self.store.get(self.job_id)
        if record.state == "succeeded":
            return record.result
        if record.state in TERMINAL_STATES:
            raise JobFailed(self.job_id, record.state, record.error)
        raise JobPending(f"job {self.job_id} is {record.state}; call wait() first")


class PipelineHandle:
    """The jobs of one pipeline run (one ``workflow_id``), first step first."""

    def __init__(self, workflow_id: str, jobs: Sequence[JobHandle]) -> None:
        self.workflow_id = workflow_id
        self.jobs = list(jobs)

    def wait(self, timeout_s: float = 120.0) -> JobRecord:
        """Wait until the pipeline ended: the last step's record, or the first step that did
        not succeed (later steps are never queued then). Raises ``TimeoutError``."""
        deadline = time.monotonic() + timeout_s
        record: JobRecord | None = None
        for handle in self.jobs:
            record = _await(handle, deadline)
            if record.state != "succeeded":
                return record
        assert record is not None
        return record

    def result(self) -> Any:
        """The last step's result; raises like :meth:`JobHandle.result` for the step that
        stopped the pipeline."""
        for handle in self.jobs[:-1]:
            handle.result()
        return self.jobs[-1].result()


def _await(handle: JobHandle, deadline: float) -> JobRecord:
    while handle.store.state(handle.job_id) is None:
        if time.monotonic() >= deadline:
            raise TimeoutError(f"pipeline step {handle.job_id} was never queued")
        time.sleep(0.05)
    return handle.wait(max(deadline - time.monotonic(), 0.0))


class JobClient:
    """Submits jobs for one settings object; reuse it for many submits, then ``close()``.

    Loads the agent catalog (``FLEET_AGENT_MODULES``) and the registry once; builds its Celery
    producer app lazily (or uses ``app``, e.g. the worker's own).
    """

    def __init__(
        self,
        settings: FleetSettings | None = None,
        *,
        redis_client: redis.Redis | None = None,
        catalog: AgentCatalog | None = None,
        app: Celery | None = None,
        registry: Registry | None = None,
    ) -> None:
        self.settings = settings or FleetSettings.load()
        self._owns_redis = redis_client is None
        self.redis = redis_client or make_redis(self.settings)
        self.store = JobStore(self.settings, self.redis)
        self.catalog = catalog or load_catalog(self.settings)
        self._app = app
        self._owns_app = app is None
        self._registry = registry

    @property
    def app(self) -> Celery:
        """The Celery app used to send messages (created on first use)."""
        if self._app is None:
            from workers.app import create_app  # noqa: PLC0415 - workers.app imports this module

            self._app = create_app(self.settings)
        return self._app

    def close(self) -> None:
        """Release the Redis and broker connections this client opened."""
        if self._owns_app and self._app is not None:
            self._app.close()
            self._app = None
        if self._owns_redis:
            self.redis.close()

    def __enter__(self) -> JobClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # validation -------------------------------------------------------------------------
    def _agent(self, name: str, field: str = "agent") -> AgentSpec:
        spec = self.catalog.get(name)
        if spec is None:
            known = ", ".join(self.catalog.names()) or "none"
            raise SubmitError(
                f"{field}: unknown agent {name!r}; known agents: {known} "
                "(agents load from FLEET_AGENT_MODULES)"
            )
        self._check_task_type(spec)
        return spec

    def _check_task_type(self, spec: AgentSpec) -> None:
        try:
            if self._registry is None:  # loaded (and validated) once, on the first submit
                from fleet.registry import load_registry  # noqa: PLC0415

                self._registry = load_registry(self.settings.registry_path)
            self._registry.task(spec.task_type)
        except UnknownTaskType as exc:
            raise SubmitError(
                f"task_type: agent {spec.name!r} uses task type {spec.task_type!r}, which the "
                f"registry does not declare; add it to the registry or fix the agent ({exc})"
            ) from exc
        except ConfigError as exc:
            raise SubmitError(f"task_type: cannot check {spec.task_type!r}: {exc}") from exc

    def _payload(self, spec: AgentSpec, payload: Mapping[str, Any]) -> dict[str, Any]:
        if not isinstance(payload, Mapping):
            raise SubmitError(f"payload: expected a JSON object, got {type(payload).__name__}")
        try:
            text = json.dumps(payload)
        except (TypeError, ValueError) as exc:
            raise SubmitError(f"payload: not JSON-serialisable ({exc}); send plain JSON") from exc
        if len(text.encode()) > MAX_PAYLOAD_BYTES:
            raise SubmitError(
                f"payload: {len(text.encode())} bytes of JSON exceeds the {MAX_PAYLOAD_BYTES}"
                "-byte limit; store large inputs elsewhere and pass a reference"
            )
        try:
            spec.payload_model.model_validate(payload)
        except ValidationError as exc:
            raise SubmitError(
                f"{_first_error(exc, 'payload')} (schema {spec.payload_model.__name__} of "
                f"agent {spec.name!r})"
            ) from exc
        return dict(payload)

    def build_job(self, agent: str, payload: Mapping[str, Any], **fields: Any) -> AgentJob:
        """Validate everything and return the job, without queueing it."""
        spec = self._agent(agent)
        body = self._payload(spec, payload)
        for i, name in enumerate(fields.get("next_agents", ())):
            self._agent(name, field=f"agents[{i + 1}]")
        try:
            return AgentJob(
                agent=agent, task_type=spec.task_type, payload=body, queue=spec.queue, **fields
            )
        except ValidationError as exc:
            raise SubmitError(_first_error(exc, "")) from exc

    # queueing ---------------------------------------------------------------------------
    def enqueue(self, job: AgentJob, *, countdown_s: float | None = None) -> int:
        """Send ``job``'s message to its queue (the record must exist already).

        Takes the next dispatch number first (:meth:`JobStore.stamp_dispatch`), which
        supersedes any older message of the job; returns that number.
        """
        dispatch = self.store.stamp_dispatch(job.job_id, job.queue)
        self.publish(job, dispatch, countdown_s=countdown_s)
        return dispatch

    def publish(self, job: AgentJob, dispatch: int, *, countdown_s: float | None = None) -> None:
        """Send the message of dispatch ``dispatch`` of ``job`` (already stamped)."""
        self.app.send_task(
            TASK_NAME,
            args=[job.model_dump(mode="json")],
            task_id=task_id(job.job_id, dispatch),
            queue=job.queue,
            countdown=countdown_s,
            priority=job.priority or None,
        )

    def submit_job(self, job: AgentJob) -> JobHandle:
        """Record and queue an already-built job (see :meth:`build_job`)."""
        dispatch = self.store.create_dispatched(job)
        if dispatch:
            self.publish(job, dispatch)
        return JobHandle(self.store, job.job_id)

    def submit(
        self,
        agent: str,
        payload: Mapping[str, Any],
        *,
        session_id: str | None = None,
        workflow_id: str | None = None,
        priority: int = 0,
        limits: JobLimits | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> JobHandle:
        """Validate and queue one job for ``agent``; raises SubmitError with nothing queued."""
        job = self.build_job(
            agent,
            payload,
            session_id=session_id,
            workflow_id=workflow_id,
            priority=priority,
            limits=limits or JobLimits(),
            metadata=dict(metadata or {}),
        )
        return self.submit_job(job)

    def submit_pipeline(
        self,
        agents: Sequence[str],
        payload: Mapping[str, Any],
        *,
        session_id: str | None = None,
        workflow_id: str | None = None,
        priority: int = 0,
    ) -> PipelineHandle:
        """Queue ``agents[0]`` with ``payload``; each later agent gets the previous output."""
        if not agents:
            raise SubmitError("agents: a pipeline needs at least one agent name")
        workflow = workflow_id or _new_id()
        job = self.build_job(
            agents[0],
            payload,
            session_id=session_id,
            workflow_id=workflow,
            priority=priority,
            next_agents=tuple(agents[1:]),
        )
        ids = [job.job_id]
        for _ in agents[1:]:
            ids.append(next_job_id(ids[-1]))
        self.submit_job(job)
        return PipelineHandle(workflow, [JobHandle(self.store, i) for i in ids])

    def enqueue_next(self, job: AgentJob, output: Any) -> str | None:
        """Queue the pipeline step after ``job`` with ``output`` as payload (idempotent).

        A missing next step is created and published; one still queued is published again
        (a new dispatch supersedes its older message); one that runs or ended is left alone.
        Returns the next step's id, or None at the end of the pipeline.
        """
        if not job.next_agents:
            return None
        spec = self.catalog.get(job.next_agents[0])
        if spec is None:
            raise SubmitError(f"next_agents[0]: agent {job.next_agents[0]!r} is not loaded")
        nxt = job.model_copy(
            update={
                "job_id": next_job_id(job.job_id),
                "agent": spec.name,
                "task_type": spec.task_type,
                "queue": spec.queue,
                "payload": _as_payload(output),
                "next_agents": job.next_agents[1:],
                "created_at_s": time.time(),
            }
        )
        dispatch = self.store.create_dispatched(nxt)
        if dispatch:
            self.publish(nxt, dispatch)
        elif self.store.state(nxt.job_id) == "queued":
            self.enqueue(nxt)
        return nxt.job_id

    def cancel(self, job_id: str, *, reason: str = "cancelled by request") -> bool:
        """Cancel a ``queued`` job (its message is then acked without running). False when
        it already runs or ended."""
        changed, previous = self.store.transition(
            job_id,
            "cancelled",
            allowed_from=("queued",),
            fields={
                "error": reason,
                "policy_reason": "cancelled",
                "finished_at_ms": int(time.time() * 1000),
            },
        )
        if previous is None:
            raise JobNotFound(f"no job with id {job_id!r}; nothing to cancel")
        return changed

    def handle(self, job_id: str) -> JobHandle:
        """A handle on an existing job id."""
        return JobHandle(self.store, job_id)


def submit(
    agent: str,
    payload: Mapping[str, Any],
    *,
    settings: FleetSettings | None = None,
    session_id: str | None = None,
    workflow_id: str | None = None,
    priority: int = 0,
    limits: JobLimits | None = None,
    metadata: Mapping[str, str] | None = None,
) -> JobHandle:
    """Validate and queue one job; for many submits reuse a :class:`JobClient`.

    Raises :class:`~fleet.errors.SubmitError` (nothing queued) naming the bad field.
    """
    client = JobClient(settings)
    try:
        return client.submit(
            agent,
            payload,
            session_id=session_id,
            workflow_id=workflow_id,
            priority=priority,
            limits=limits,
            metadata=metadata,
        )
    finally:
        client.close()


def submit_pipeline(
    agents: Sequence[str],
    payload: Mapping[str, Any],
    *,
    settings: FleetSettings | None = None,
    session_id: str | None = None,
    workflow_id: str | None = None,
    priority: int = 0,
) -> PipelineHandle:
    """Queue a chain of agents (one workflow id); each step's output feeds the next step."""
    client = JobClient(settings)
    try:
        return client.submit_pipeline(
            agents, payload, session_id=session_id, workflow_id=workflow_id, priority=priority
        )
    finally:
        client.close()


def requeue_job(settings: FleetSettings, job: Mapping[str, Any]) -> None:
    """Send an escalated job back to its original queue with a fresh attempt budget.

    Same job id; the delivery counter and retry-later count are reset and the record goes back
    to ``queued``. A job that already succeeded is left alone.
    """
    agent_job = AgentJob.model_validate(dict(job))
    with JobClient(settings) as client:
        store = client.store
        if store.state(agent_job.job_id) is None:
            dispatch = store.create_dispatched(agent_job)
            if dispatch:
                reset_deliveries(settings, client.redis, agent_job.job_id)
                client.publish(agent_job, dispatch)
                return
        changed = store.back_to_queued(
            agent_job.job_id,
            allowed_from=("escalated", "failed", "cancelled", "queued"),
            fields={"retry_later_count": 0, "error": "", "policy": "", "policy_reason": ""},
        )
        if not changed:  # running or succeeded: its budget and counters stay as they are
            return
        store.incr_field(agent_job.job_id, "requeues")
        reset_deliveries(settings, client.redis, agent_job.job_id)
        client.enqueue(agent_job)
