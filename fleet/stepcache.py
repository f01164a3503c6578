"""Step cache: a redelivered job does not pay again for ``llm_call`` steps it finished.

:class:`StepCacheMiddleware` stores each successful result under ``(job_id, step)`` in
``<ns>:job:<id>:steps`` (a hash, ``step -> LLMResult JSON``); on the next delivery of the same
job, ``before_call`` returns the stored result instead of calling a provider. Calls outside a
job (no ``job_id`` or ``step``) pass through untouched.
"""

from __future__ import annotations

import logging
from typing import cast

import redis

from fleet.context import current_job
from fleet.errors import StateUnavailable
from fleet.middleware import CallContext, LLMMiddleware
from fleet.settings import FleetSettings
from fleet.types import LLMResult

log = logging.getLogger(__name__)

STEP_TTL_S = 7 * 24 * 3600


def steps_key(settings: FleetSettings, job_id: str) -> str:
    """``<ns>:job:<id>:steps``: completed steps of one job."""
    return settings.key("job", job_id, "steps")


def completed_steps(
    settings: FleetSettings, redis_client: redis.Redis, job_id: str
) -> dict[int, LLMResult]:
    """Every completed step of ``job_id`` (step number -> result); raises StateUnavailable.

    Inside that job's execution the steps the step cache already holds are used (no round
    trip); otherwise one ``HGETALL``.
    """
    job = current_job()
    if job is not None and job.job_id == job_id and job.paid_steps is not None:
        return {k: LLMResult.model_validate_json(v) for k, v in job.paid_steps.items()}
    try:
        raw = cast("dict[bytes, bytes]", redis_client.hgetall(steps_key(settings, job_id)))
    except redis.RedisError as exc:
        raise StateUnavailable(f"step cache: cannot read steps of job {job_id}: {exc}") from exc
    return {int(k): LLMResult.model_validate_json(v) for k, v in raw.items()}


class StepCacheMiddleware(LLMMiddleware):
    """``llm_call`` middleware that answers already-paid steps of a job from Redis.

    A Redis error raises :class:`~fleet.errors.StateUnavailable` rather than silently paying
    again (the worker then requeues the job). A stored step whose task type differs from the
    call (the agent's code changed between deliveries) is ignored and logged.
    """

    def __init__(self, settings: FleetSettings, redis_client: redis.Redis) -> None:
        self.settings = settings
        self.redis = redis_client

    def _paid(self, ctx: CallContext) -> bytes | None:
        """The stored answer of ``(ctx.job_id, ctx.step)``, if that step was paid for.

        Inside a job execution all paid steps are read with ONE ``HGETALL`` on its first call
        and kept on the :class:`~fleet.context.JobContext`, so later calls of the same
        execution add no Redis round trip; outside one, a single ``HGET``.
        """
        assert ctx.job_id is not None and ctx.step is not None
        key = steps_key(self.settings, ctx.job_id)
        job = current_job()
        try:
            if job is None or job.job_id != ctx.job_id:
                return cast("bytes | None", self.redis.hget(key, str(ctx.step)))
            if job.paid_steps is None:
                raw = cast("dict[bytes, bytes]", self.redis.hgetall(key))
                job.paid_steps = {int(k): v for k, v in raw.items()}
        except redis.RedisError as exc:
            raise StateUnavailable(
                f"step cache: cannot read job {ctx.job_id} step {ctx.step}: {exc}"
            ) from exc
        return job.paid_steps.get(ctx.step)

    def before_call(self, ctx: CallContext) -> LLMResult | None:
        """Return the stored result of ``(ctx.job_id, ctx.step)`` when that step completed."""
        if ctx.job_id is None or ctx.step is None:
            return None
        raw = self._paid(ctx)
        if raw is None:
            return None
        cached = LLMResult.model_validate_json(raw)
        if cached.task_type != ctx.task_type:
            log.warning(
                "step cache mismatch job_id=%s step=%s cached_task_type=%s task_type=%s",
                ctx.job_id,
                ctx.step,
                cached.task_type,
                ctx.task_type,
            )
            return None
        log.info(
            "step cache hit job_id=%s step=%s task_type=%s", ctx.job_id, ctx.step, ctx.task_type
        )
        return cached

    def after_call(self, ctx: CallContext, result: LLMResult) -> None:
        """Store the result of ``(ctx.job_id, ctx.step)`` (idempotent for cached answers)."""
        if ctx.job_id is None or ctx.step is None:
            return
        job = current_job()
        if job is not None and job.paid_steps is not None and ctx.step in job.paid_steps:
            return  # answered from the cache: already stored
        key = steps_key(self.settings, ctx.job_id)
        body = result.model_dump_json()
        try:
            pipe = self.redis.pipeline(transaction=True)
            pipe.hsetnx(key, str(ctx.step), body)
            pipe.expire(key, STEP_TTL_S)
            stored, _ = pipe.execute()
        except redis.RedisError as exc:
            raise StateUnavailable(
                f"step cache: cannot store job {ctx.job_id} step {ctx.step}: {exc}"
            ) from exc
        if job is not None and job.job_id == ctx.job_id and job.paid_steps is not None:
            if stored:
                job.paid_steps[ctx.step] = body.encode()
            else:  # a concurrent delivery stored this step first: read the truth when settling
                job.paid_steps = None
