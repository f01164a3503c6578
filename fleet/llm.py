"""``llm_call()``: the one way agents reach a model.

It routes by task type under the fleet-wide active preset (primary, then backups), asks the
fleet breaker before each candidate (provider and model scopes in one acquire), makes exactly one
HTTP request per candidate with real deadlines, records the outcome, and reports every attempt.
There are no hidden retries: the only retry is moving down the chain.

A process builds one :class:`FleetClient` from settings (workers do it at start) and installs it
with :func:`set_default_client`; the module-level :func:`llm_call` uses it, creating one from
the environment on first use when none was installed.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import httpx
import redis

from breaker_service.breaker import FleetBreaker
from breaker_service.listeners import BreakerListener
from breaker_service.policy import BreakerPolicy
from breaker_service.scope import Scope
from fleet.attempt import CandidateCaller
from fleet.context import current_job
from fleet.errors import (
    AllRoutesFailed,
    CallerError,
    ContextLengthExceeded,
    FleetError,
)
from fleet.middleware import CallContext, LLMMiddleware
from fleet.providers.http import make_http_client
from fleet.redis_client import make_redis
from fleet.registry import Registry, load_registry
from fleet.routing import Router
from fleet.settings import FleetSettings
from fleet.tokens import estimate_prompt_tokens
from fleet.types import Attempt, LLMResult

log = logging.getLogger("fleet.llm")


class FleetClient:
    """Everything one process needs to call models: registry, router, breaker, HTTP pool.

    Build one per process (it owns a Redis client, an httpx pool and the breaker's background
    record sender) and :meth:`close` it at shutdown.
    """

    def __init__(
        self,
        settings: FleetSettings,
        *,
        registry: Registry | None = None,
        redis: redis.Redis | None = None,
        middleware: Sequence[LLMMiddleware] = (),
        breaker_listeners: Sequence[BreakerListener] = (),
        http: httpx.Client | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry or load_registry(settings.registry_path)
        self.redis = redis if redis is not None else make_redis(settings)
        self.router = Router(settings, self.registry, self.redis)
        self._policies: dict[Scope, BreakerPolicy] = {}
        self.breaker = FleetBreaker.from_settings(
            settings, self.redis, self._policy_for, listeners=breaker_listeners
        )
        self.middleware: list[LLMMiddleware] = list(middleware)
        self._owns_http = http is None
        self.http = http or make_http_client()
        self._caller = CandidateCaller(self.registry, self.breaker, self.http)

    def _policy_for(self, scope: Scope) -> BreakerPolicy:
        """The scope's policy, merged once per client (the registry is fixed for its life):
        merging validates a pydantic model, too slow for every acquire of every call."""
        policy = self._policies.get(scope)
        if policy is None:
            policy = self.registry.policy_for(scope.provider, scope.model)
            self._policies[scope] = policy
        return policy

    def llm_call(
        self,
        task_type: str,
        messages: Sequence[Mapping[str, str]],
        *,
        session_id: str | None = None,
        job_id: str | None = None,
        max_tokens: int | None = None,
        timeout_s: float | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> LLMResult:
        """Call the model that ``task_type`` routes to, falling back down its backup chain.

        ``max_tokens`` defaults to the task profile's; ``timeout_s`` caps each attempt's total
        deadline (the provider's ``timeout_s`` otherwise). Inside a job (see
        :mod:`fleet.context`) ``job_id``/``session_id`` default to the job's and the call gets
        the job's next step number, so a redelivered job can reuse completed steps.

        Raises :class:`AllRoutesFailed` (every candidate failed or was rejected; carries the
        attempts and ``retry_after_s``), a :class:`CallerError` subclass for requests at fault
        (no fallback), :class:`~fleet.errors.UnknownTaskType`, or
        :class:`~fleet.errors.BudgetExceeded` from a budget middleware.
        """
        ctx = self._context(
            task_type=task_type,
            messages=messages,
            session_id=session_id,
            job_id=job_id,
            max_tokens=max_tokens,
            timeout_s=timeout_s,
            metadata=metadata,
        )
        try:
            for mw in self.middleware:
                cached = mw.before_call(ctx)
                if cached is not None:
                    self._after_call(ctx, cached)
                    return cached
            result = self._route_and_call(ctx)
        except FleetError as exc:
            for mw in self.middleware:
                mw.on_failure(ctx, exc)
            raise
        self._after_call(ctx, result)
        return result

    async def allm_call(
        self,
        task_type: str,
        messages: Sequence[Mapping[str, str]],
        **kwargs: Any,
    ) -> LLMResult:
        """Async twin of :meth:`llm_call`: the same call, run in a worker thread.

        The provider request, breaker round trips and deadlines are exactly those of the sync
        path; the event loop is not blocked.
        """
        return await asyncio.to_thread(self.llm_call, task_type, messages, **kwargs)

    def close(self) -> None:
        """Flush pending breaker records and release the HTTP pool and Redis connections."""
        self.breaker.close()
        if self._owns_http:
            self.http.close()
        self.redis.close()

    def __enter__(self) -> FleetClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals -----------------------------------------------------------------------

    def _context(
        self,
        *,
        task_type: str,
        messages: Sequence[Mapping[str, str]],
        session_id: str | None,
        job_id: str | None,
        max_tokens: int | None,
        timeout_s: float | None,
        metadata: Mapping[str, Any] | None,
    ) -> CallContext:
        # arguments first: a refused call must not take one of the job's step numbers
        if max_tokens is not None and max_tokens < 1:
            raise CallerError(
                f"max_tokens must be >= 1 (got {max_tokens}); omit it for the default"
            )
        if timeout_s is not None and timeout_s <= 0:
            raise CallerError(f"timeout_s must be > 0 (got {timeout_s})")
        job = current_job()
        step = None
        if job is not None:
            job_id = job_id or job.job_id
            session_id = session_id or job.session_id
            step = job.next_step() if job_id == job.job_id else None
        return CallContext(
            task_type=task_type,
            messages=messages,
            session_id=session_id,
            job_id=job_id,
            step=step,
            max_tokens=max_tokens,
            timeout_s=timeout_s,
            metadata=dict(metadata or {}),
        )

    def _route_and_call(self, ctx: CallContext) -> LLMResult:
        route = self.router.route(ctx.task_type)
        max_tokens = ctx.max_tokens or route.task.max_tokens
        prompt_tokens = estimate_prompt_tokens(ctx.messages)
        attempts: list[Attempt] = []
        retry_after: list[float] = []
        too_long = 0  # candidates skipped for their context window (not for configuration)
        for model in route.candidates:
            if prompt_tokens + max_tokens > model.context_window:
                too_long += 1
                attempt = Attempt(
                    model=model.key,
                    provider=model.provider,
                    outcome="skipped",
                    breaker="bypass",
                    detail=(
                        f"prompt ~{prompt_tokens} + max_tokens {max_tokens} tokens exceed the "
                        f"context window {model.context_window}"
                    ),
                )
                self._note(ctx, attempts, attempt)
                continue
            outcome = self._caller.call(
                model, route.task, ctx.messages, max_tokens=max_tokens, timeout_s=ctx.timeout_s
            )
            self._note(ctx, attempts, outcome.attempt)
            if outcome.attempt.retry_after_s is not None:
                retry_after.append(outcome.attempt.retry_after_s)
            if outcome.caller_error is not None:
                outcome.caller_error.attempts = list(attempts)
                raise outcome.caller_error
            if outcome.completion is not None:
                return self._caller.result(
                    ctx,
                    route,
                    model,
                    completion=outcome.completion,
                    prompt_estimate=prompt_tokens,
                    attempts=attempts,
                )
        if too_long == len(route.candidates):
            raise ContextLengthExceeded(
                f"task {ctx.task_type!r}: prompt ~{prompt_tokens} tokens + max_tokens "
                f"{max_tokens} fit no model of preset {route.preset!r} "
                f"(largest window {max(m.context_window for m in route.candidates)}); "
                "shorten the prompt or lower max_tokens",
                attempts,
            )
        raise AllRoutesFailed(ctx.task_type, attempts, min(retry_after) if retry_after else None)

    def _note(self, ctx: CallContext, attempts: list[Attempt], attempt: Attempt) -> None:
        attempts.append(attempt)
        log.log(
            logging.INFO if attempt.outcome == "success" else logging.WARNING,
            "llm attempt task_type=%s job=%s session=%s step=%s model=%s provider=%s "
            "outcome=%s status=%s latency_ms=%.1f breaker=%s retry_after_s=%s detail=%s",
            ctx.task_type,
            ctx.job_id,
            ctx.session_id,
            ctx.step,
            attempt.model,
            attempt.provider,
            attempt.outcome,
            attempt.status,
            attempt.latency_ms,
            attempt.breaker,
            attempt.retry_after_s,
            attempt.detail or "-",
        )
        for mw in self.middleware:
            mw.after_attempt(ctx, attempt)

    def _after_call(self, ctx: CallContext, result: LLMResult) -> None:
        log.info(
            "llm call task_type=%s job=%s session=%s step=%s model=%s provider=%s "
            "prompt_tokens=%d completion_tokens=%d estimated=%s cost_usd=%.6f latency_ms=%.1f "
            "attempts=%d preset=%s@v%d",
            ctx.task_type,
            ctx.job_id,
            ctx.session_id,
            ctx.step,
            result.model,
            result.provider,
            result.usage.prompt_tokens,
            result.usage.completion_tokens,
            result.usage.estimated,
            result.cost_usd,
            result.latency_ms,
            len(result.attempts),
            result.preset,
            result.preset_version,
        )
        for mw in self.middleware:
            mw.after_call(ctx, result)


# -- the process default client ---------------------------------------------------------

_default_lock = threading.Lock()
_default: list[FleetClient] = []


def set_default_client(client: FleetClient | None) -> None:
    """Install ``client`` as this process's default for :func:`llm_call` (None to clear)."""
    with _default_lock:
        _default.clear()
        if client is not None:
            _default.append(client)


def get_default_client() -> FleetClient:
    """This process's default client, built from ``FleetSettings.load()`` on first use."""
    with _default_lock:
        if not _default:
            _default.append(FleetClient(FleetSettings.load()))
        return _default[0]


def llm_call(
    task_type: str,
    messages: Sequence[Mapping[str, str]],
    *,
    session_id: str | None = None,
    job_id: str | None = None,
    max_tokens: int | None = None,
    timeout_s: float | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> LLMResult:
    """Call the model routed for ``task_type`` with chat ``messages`` (see FleetClient.llm_call).

    ``messages`` are OpenAI-style ``{"role": ..., "content": ...}`` dicts. Returns an
    :class:`~fleet.types.LLMResult` with the text, model, tokens, cost and every attempt.
    """
    return get_default_client().llm_call(
        task_type,
        messages,
        session_id=session_id,
        job_id=job_id,
        max_tokens=max_tokens,
        timeout_s=timeout_s,
        metadata=metadata,
    )


async def allm_call(
    task_type: str, messages: Sequence[Mapping[str, str]], **kwargs: Any
) -> LLMResult:
    """Async twin of :func:`llm_call` (runs the same call in a worker thread)."""
    return await get_default_client().allm_call(task_type, messages, **kwargs)
