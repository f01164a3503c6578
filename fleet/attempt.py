"""One candidate of a route: breaker acquire, one provider request, outcome record.

Kept apart from :mod:`fleet.llm` so the routing loop reads as a loop, and so each step of a
single attempt (and the mapping of errors to breaker outcomes) is in one place.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import httpx

from breaker_service.breaker import FleetBreaker, Permit, Rejection, outcome_of
from breaker_service.outcomes import Outcome, OutcomeClass
from breaker_service.scope import Scope
from fleet.errors import (
    CallerError,
    ConfigError,
    ContentPolicyViolation,
    ContextLengthExceeded,
    ProviderError,
)
from fleet.middleware import CallContext
from fleet.providers import make_provider_client
from fleet.providers.base import Completion, CompletionRequest, ProviderClient
from fleet.registry import ModelInfo, ProviderInfo, Registry, TaskProfile
from fleet.routing import Route
from fleet.tokens import estimate_text_tokens
from fleet.types import Attempt, LLMResult, Usage

log = logging.getLogger("fleet.llm")


def scopes_for(model: ModelInfo) -> list[Scope]:
    """The breaker scopes of one candidate: its provider, and the model on that provider."""
    return [Scope(model.provider), Scope(model.provider, model.name)]


@dataclass(frozen=True)
class CandidateOutcome:
    """What trying one candidate produced: always an attempt; a completion on success; a
    caller error when the request itself is at fault (the route must stop there)."""

    attempt: Attempt
    completion: Completion | None = None
    caller_error: CallerError | None = None


class CandidateCaller:
    """Tries one candidate model: acquire, request, record. Holds one client per provider."""

    def __init__(self, registry: Registry, breaker: FleetBreaker, http: httpx.Client) -> None:
        self.registry = registry
        self.breaker = breaker
        self.http = http
        self._clients: dict[str, ProviderClient] = {}
        self._scopes: dict[str, tuple[Scope, ...]] = {}  # per model key, built (and checked) once

    def _client(self, provider: ProviderInfo) -> ProviderClient:
        client = self._clients.get(provider.name)
        if client is None:
            client = make_provider_client(provider, self.http)
            self._clients[provider.name] = client
        return client

    def call(
        self,
        model: ModelInfo,
        task: TaskProfile,
        messages: Sequence[Mapping[str, str]],
        *,
        max_tokens: int,
        timeout_s: float | None,
    ) -> CandidateOutcome:
        """Try ``model`` once. Never raises for provider or breaker trouble: it reports it."""
        provider = self.registry.provider(model.provider)
        scopes = self._scopes.get(model.key)
        if scopes is None:
            scopes = self._scopes[model.key] = tuple(scopes_for(model))
        decision = self.breaker.acquire(scopes)
        if isinstance(decision, Rejection):
            return CandidateOutcome(
                Attempt(
                    model=model.key,
                    provider=provider.name,
                    outcome="rejected",
                    breaker="reject",
                    detail=f"breaker {decision.scope}: {decision.reason}",
                    retry_after_s=decision.retry_after_s,
                )
            )
        request = CompletionRequest(
            api_name=model.api_name,
            messages=messages,
            max_tokens=max_tokens,
            temperature=task.temperature,
            connect_timeout_s=provider.connect_timeout_s,
            total_timeout_s=min(timeout_s, provider.timeout_s) if timeout_s else provider.timeout_s,
        )
        started = time.monotonic()
        try:
            completion = self._client(provider).complete(request)
        except ConfigError as exc:
            # Our configuration (a missing key, a malformed URL), not the provider's health:
            # release the permit uncounted and move on down the chain.
            self.breaker.record(decision, Outcome(OutcomeClass.IGNORED, detail="configuration"))
            return CandidateOutcome(
                Attempt(
                    model=model.key,
                    provider=provider.name,
                    outcome="skipped",
                    breaker=decision.decision,
                    detail=str(exc),
                )
            )
        except ProviderError as exc:
            return self._failed(model, provider, decision, exc, started)
        self.breaker.record(
            decision, Outcome(OutcomeClass.SUCCESS, latency_ms=completion.latency_ms, status=200)
        )
        return CandidateOutcome(
            Attempt(
                model=model.key,
                provider=provider.name,
                outcome=OutcomeClass.SUCCESS.value,
                status=completion.status,
                latency_ms=completion.latency_ms,
                breaker=decision.decision,
            ),
            completion=completion,
        )

    def _failed(
        self,
        model: ModelInfo,
        provider: ProviderInfo,
        permit: Permit,
        exc: ProviderError,
        started: float,
    ) -> CandidateOutcome:
        outcome = outcome_of(exc, (time.monotonic() - started) * 1000)
        self.breaker.record(permit, outcome)
        cls, latency_ms = outcome.cls, outcome.latency_ms
        detail = str(exc)
        if cls is OutcomeClass.CREDENTIAL:
            detail = (
                f"{provider.name} rejected the credential (HTTP {exc.status}): "
                f"check the API key in ${provider.api_key_env or '(none configured)'}"
            )
            log.error(
                "credential rejected provider=%s status=%s env_var=%s: the breaker stays open "
                "until `fleet breakers reset %s`",
                provider.name,
                exc.status,
                provider.api_key_env,
                provider.name,
            )
        attempt = Attempt(
            model=model.key,
            provider=provider.name,
            outcome=cls.value,
            status=exc.status,
            latency_ms=latency_ms,
            breaker=permit.decision,
            detail=detail,
            retry_after_s=exc.retry_after_s,
        )
        caller_error: CallerError | None = None
        if cls is OutcomeClass.IGNORED:
            kinds: dict[str | None, type[CallerError]] = {
                "context_length": ContextLengthExceeded,
                "content_policy": ContentPolicyViolation,
            }
            caller_error = kinds.get(exc.caller_fault, CallerError)(
                f"{model.key} refused the request (HTTP {exc.status}, "
                f"{exc.caller_fault or 'bad_request'}): {exc}; fix the request, "
                "a backup would refuse it too"
            )
        return CandidateOutcome(attempt, caller_error=caller_error)

    def result(
        self,
        ctx: CallContext,
        route: Route,
        model: ModelInfo,
        *,
        completion: Completion,
        prompt_estimate: int,
        attempts: list[Attempt],
    ) -> LLMResult:
        """Build the :class:`LLMResult` of a successful attempt (usage, cost, history)."""
        estimated = completion.prompt_tokens is None or completion.completion_tokens is None
        usage = Usage(
            prompt_tokens=(
                completion.prompt_tokens
                if completion.prompt_tokens is not None
                else prompt_estimate
            ),
            completion_tokens=(
                completion.completion_tokens
                if completion.completion_tokens is not None
                else estimate_text_tokens(completion.text)
            ),
            estimated=estimated,
        )
        return LLMResult(
            text=completion.text,
            model=model.key,
            provider=model.provider,
            task_type=ctx.task_type,
            usage=usage,
            cost_usd=model.cost_usd(usage.prompt_tokens, usage.completion_tokens),
            latency_ms=sum(a.latency_ms for a in attempts),
            attempts=list(attempts),
            preset=route.preset,
            preset_version=route.preset_version,
        )
