"""Local-failure policies: how a worker settles a job whose ``llm_call`` failed everywhere.

Per task type (registry ``failure_policy``), applied on :class:`~fleet.errors.AllRoutesFailed`:

- ``escalate`` (default): park the job in the durable escalation queue; state ``escalated``.
- ``retry_later``: back to ``queued`` and re-sent with a countdown of the breaker's
  ``retry_after_s`` (capped below the visibility timeout), at most
  ``retry_later_max_attempts`` times; then escalate (reason ``retry_later_exhausted``).
- ``degrade``: ``succeeded`` with the task's ``fallback_output``, flagged ``degraded``.
- ``fail``: ``failed`` with the full attempt history.

Every settlement records the policy, the reason, the attempt history and the cost so far.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fleet.errors import AllRoutesFailed
from fleet.jobs import AgentJob
from fleet.settings import FleetSettings
from fleet.stepcache import completed_steps
from fleet.types import Attempt
from workers.redelivery import reset_deliveries
from workers.runtime import WorkerRuntime

log = logging.getLogger(__name__)

DEFAULT_RETRY_S = 5.0
MIN_RETRY_S = 0.5


def retry_countdown_s(settings: FleetSettings, retry_after_s: float | None) -> float:
    """Countdown for ``retry_later``: the breaker's ``retry_after_s`` (default 5 s), capped
    so that countdown + hard time limit stays below the visibility timeout."""
    cap = max(settings.visibility_timeout_s - settings.job_time_limit_s - 1, 1)
    wanted = DEFAULT_RETRY_S if retry_after_s is None else retry_after_s
    return float(min(max(wanted, MIN_RETRY_S), cap))


def _steps(rt: WorkerRuntime, job_id: str) -> tuple[list[Attempt], float]:
    steps = completed_steps(rt.settings, rt.redis, job_id)
    history = [a for _, result in sorted(steps.items()) for a in result.attempts]
    return history, sum(r.cost_usd for r in steps.values())


def succeed(
    rt: WorkerRuntime,
    job: AgentJob,
    output: Any,
    *,
    degraded: bool = False,
    reason: str | None = None,
    attempts: Sequence[Attempt] = (),
) -> bool:
    """Settle ``job`` as succeeded with ``output`` (``degraded`` for fallback answers)."""
    history, cost = _steps(rt, job.job_id)
    done = rt.jobs.store.finish(
        job.job_id,
        "succeeded",
        result=output,
        history=[*history, *attempts],
        cost_usd=cost,
        degraded=degraded,
        policy="degrade" if degraded else None,
        policy_reason=reason,
    )
    log.info("job settled job_id=%s state=succeeded degraded=%s", job.job_id, degraded)
    return done


def fail(
    rt: WorkerRuntime,
    job: AgentJob,
    *,
    reason: str,
    detail: str,
    attempts: Sequence[Attempt] = (),
    policy: str | None = None,
) -> bool:
    """Settle ``job`` as failed, recording ``reason`` and the full attempt history."""
    history, cost = _steps(rt, job.job_id)
    done = rt.jobs.store.finish(
        job.job_id,
        "failed",
        error=detail,
        history=[*history, *attempts],
        cost_usd=cost,
        policy=policy,
        policy_reason=reason,
    )
    log.warning(
        "job settled job_id=%s state=failed reason=%s detail=%s", job.job_id, reason, detail
    )
    return done


def escalate(
    rt: WorkerRuntime,
    job: AgentJob,
    *,
    reason: str,
    detail: str,
    attempts: Sequence[Attempt] = (),
    policy: str = "escalate",
) -> bool:
    """Park ``job`` in the escalation queue (first: durable), then settle it ``escalated``."""
    history, cost = _steps(rt, job.job_id)
    full = [*history, *attempts]
    entry = rt.escalations.park(
        job=job.model_dump(mode="json"),
        reason=reason,
        policy=policy,
        task_type=job.task_type,
        attempts=full,
        queue=job.queue,
    )
    done = rt.jobs.store.finish(
        job.job_id,
        "escalated",
        error=detail,
        history=full,
        cost_usd=cost,
        policy=policy,
        policy_reason=reason,
    )
    log.warning(
        "job escalated job_id=%s task_type=%s reason=%s entry=%s detail=%s",
        job.job_id,
        job.task_type,
        reason,
        entry.id,
        detail,
    )
    return done


def _retry_later(rt: WorkerRuntime, job: AgentJob, exc: AllRoutesFailed, max_attempts: int) -> str:
    count = rt.jobs.store.incr_field(job.job_id, "retry_later_count")
    if count > max_attempts:
        escalate(
            rt,
            job,
            reason="retry_later_exhausted",
            detail=f"retry_later used {max_attempts} times; last: {exc}",
            attempts=exc.attempts,
            policy="retry_later",
        )
        return "escalated"
    delay = retry_countdown_s(rt.settings, exc.retry_after_s)
    reason = f"all routes failed; retry {count}/{max_attempts} in {delay:.1f}s"
    if not rt.jobs.store.back_to_queued(
        job.job_id,
        allowed_from=("running",),
        fields={"policy": "retry_later", "policy_reason": reason, "error": str(exc)},
    ):
        return "duplicate"
    reset_deliveries(rt.settings, rt.redis, job.job_id)
    rt.jobs.enqueue(job, countdown_s=delay)
    log.info(
        "job retry_later job_id=%s task_type=%s attempt=%s max=%s countdown_s=%.1f",
        job.job_id,
        job.task_type,
        count,
        max_attempts,
        delay,
    )
    return "retry_later"


def apply_local_failure(rt: WorkerRuntime, job: AgentJob, exc: AllRoutesFailed) -> str:
    """Apply ``job.task_type``'s failure policy to ``exc``; returns the outcome name."""
    profile = rt.profile(job.task_type)
    chosen = profile.failure_policy
    if chosen == "retry_later":
        return _retry_later(rt, job, exc, profile.retry_later_max_attempts)
    if chosen == "degrade":
        reason = f"all routes failed; answered the fallback output ({exc})"
        succeed(
            rt, job, profile.fallback_output, degraded=True, reason=reason, attempts=exc.attempts
        )
        return "degraded"
    if chosen == "fail":
        fail(
            rt,
            job,
            reason="all_routes_failed",
            detail=str(exc),
            attempts=exc.attempts,
            policy="fail",
        )
        return "failed"
    escalate(rt, job, reason="all_routes_failed", detail=str(exc), attempts=exc.attempts)
    return "escalated"
