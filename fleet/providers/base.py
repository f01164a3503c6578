"""The provider-client contract: one HTTP request per call, real deadlines, no hidden retries.

A :class:`ProviderClient` turns a :class:`CompletionRequest` into a :class:`Completion`, or
raises :class:`fleet.errors.ProviderError` carrying the breaker outcome class (from
:func:`breaker_service.outcomes.classify`), the HTTP status, the transport error, the
provider's Retry-After and, for requests at fault, ``caller_fault``. Concrete clients
(:mod:`fleet.providers.openai_compat`, :mod:`fleet.providers.anthropic`) only build the
request and parse the answer; sending, deadlines and error mapping live here and in
:mod:`fleet.providers.http`.

API keys are read from the environment variable the provider config names, at call time.
They go into request headers only: never into logs, exception text or returned values.
"""

from __future__ import annotations

import json
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from breaker_service.outcomes import OutcomeClass, classify
from fleet.errors import MissingCredential, ProviderError
from fleet.providers.http import RawResponse, send_json

logger = logging.getLogger("fleet.providers")

_CONTEXT_MARKERS = (
    "context_length_exceeded",
    "context_length",
    "maximum context length",
    "prompt is too long",
    "too many tokens",
)
_POLICY_MARKERS = ("content_filter", "content_policy", "content policy", "content management")


class ProviderConfig(Protocol):
    """What a client needs to know about a provider (``fleet.registry.ProviderInfo`` fits).

    ``kind`` is ``openai``, ``simulated`` or ``anthropic``; ``api_key_env`` names the
    environment variable holding the key (None: the provider needs no key, e.g. local vLLM).
    """

    @property
    def name(self) -> str:
        """Provider name, as the registry spells it."""
        ...

    @property
    def kind(self) -> str:
        """Wire protocol: ``openai``, ``simulated`` or ``anthropic``."""
        ...

    @property
    def base_url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:8100/v1``; paths are appended to it."""
        ...

    @property
    def api_key_env(self) -> str | None:
        """Environment variable holding the API key, or None when no key is needed."""
        ...

    @property
    def connect_timeout_s(self) -> float:
        """Default connect deadline in seconds."""
        ...

    @property
    def timeout_s(self) -> float:
        """Default total deadline in seconds."""
        ...


@dataclass(frozen=True)
class CompletionRequest:
    """One chat completion to send.

    ``api_name`` is the model name the provider expects. ``connect_timeout_s`` bounds the TCP
    connect (and the wait for a pooled connection); ``total_timeout_s`` bounds the whole call,
    from the first byte sent to the last byte read, and is enforced by the client even
    against a server that trickles bytes.
    """

    api_name: str
    messages: Sequence[Mapping[str, str]]
    max_tokens: int
    temperature: float
    connect_timeout_s: float
    total_timeout_s: float

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.connect_timeout_s <= 0 or self.total_timeout_s <= 0:
            raise ValueError(
                "connect_timeout_s and total_timeout_s must be > 0, got "
                f"{self.connect_timeout_s} and {self.total_timeout_s}"
            )


@dataclass(frozen=True)
class Completion:
    """A successful answer. Token counts are None when the provider sent no usage."""

    text: str
    prompt_tokens: int | None
    completion_tokens: int | None
    status: int
    latency_ms: float


@dataclass(frozen=True)
class HttpCall:
    """What a concrete client sends: full URL, headers (with the key) and the JSON body."""

    url: str
    headers: Mapping[str, str]
    payload: Mapping[str, Any]


class ProviderClient(ABC):
    """Base class of provider clients. Subclasses implement the two protocol hooks.

    ``complete()`` sends exactly one HTTP request (no retries) through the shared ``http``
    client, enforces the request's deadlines, and maps every failure to ``ProviderError``.
    """

    def __init__(
        self,
        provider: ProviderConfig,
        http: httpx.Client,
        *,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.provider = provider
        self._http = http
        self._environ: Mapping[str, str] = os.environ if environ is None else environ

    @abstractmethod
    def build_call(self, request: CompletionRequest, api_key: str | None) -> HttpCall:
        """Build the HTTP request for ``request`` (``api_key`` is None when none is needed)."""

    @abstractmethod
    def parse_completion(self, body: Any) -> tuple[str, int | None, int | None]:
        """Extract ``(text, prompt_tokens, completion_tokens)`` from a decoded 2xx body.

        Raise ``KeyError``/``TypeError``/``ValueError``/``IndexError`` when the body does not
        have the expected shape; the base class turns that into a protocol failure.
        """

    def api_key(self) -> str | None:
        """The API key from the configured env var; raises ``MissingCredential`` when unset."""
        env = self.provider.api_key_env
        if not env:
            return None
        key = self._environ.get(env)
        if not key:
            raise MissingCredential(
                f"provider {self.provider.name!r} needs an API key: set the environment "
                f"variable {env} (named by api_key_env in the registry)"
            )
        return key

    def complete(self, request: CompletionRequest) -> Completion:
        """Send one completion request; return the answer or raise ``ProviderError``.

        Raises ``MissingCredential`` (before sending anything) when the key's env var is unset.
        """
        key = self.api_key()
        call = self.build_call(request, key)
        raw = send_json(
            self._http,
            call.url,
            headers=call.headers,
            payload=call.payload,
            connect_timeout_s=request.connect_timeout_s,
            total_timeout_s=request.total_timeout_s,
            label=self.provider.name,
        )
        if 200 <= raw.status < 300:
            return self._success(raw)
        raise self._http_error(raw, key)

    def _success(self, raw: RawResponse) -> Completion:
        try:
            text, prompt_tokens, completion_tokens = self.parse_completion(json.loads(raw.body))
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            logger.warning(
                "provider answer unparseable provider=%s status=%s latency_ms=%.1f",
                self.provider.name,
                raw.status,
                raw.latency_ms,
            )
            raise ProviderError(
                f"provider {self.provider.name!r} answered {raw.status} with an unparseable "
                f"body ({type(exc).__name__}); counted as a failure",
                outcome=OutcomeClass.FAILURE.value,
                status=raw.status,
                transport_error="protocol",
                latency_ms=raw.latency_ms,
            ) from exc
        return Completion(
            text=text,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            status=raw.status,
            latency_ms=raw.latency_ms,
        )

    def _http_error(self, raw: RawResponse, key: str | None) -> ProviderError:
        outcome = classify(status=raw.status)
        caller_fault = detect_caller_fault(raw.body) if outcome is OutcomeClass.IGNORED else None
        # Some providers echo the key they rejected: it is masked before anything is kept.
        detail = error_detail(raw.body, secret=key)
        message = f"provider {self.provider.name!r} answered HTTP {raw.status} ({outcome.value})"
        if caller_fault:
            message += f", caller fault: {caller_fault}"
        if raw.retry_after_s is not None:
            message += f", retry after {raw.retry_after_s:.1f}s"
        if outcome is OutcomeClass.CREDENTIAL and self.provider.api_key_env:
            message += f"; check the key in {self.provider.api_key_env}"
        if detail:
            message += f": {detail}"
        logger.info(
            "provider call failed provider=%s status=%s outcome=%s caller_fault=%s "
            "retry_after_s=%s latency_ms=%.1f",
            self.provider.name,
            raw.status,
            outcome.value,
            caller_fault,
            raw.retry_after_s,
            raw.latency_ms,
        )
        return ProviderError(
            message,
            outcome=outcome.value,
            status=raw.status,
            retry_after_s=raw.retry_after_s,
            caller_fault=caller_fault,
            latency_ms=raw.latency_ms,
        )


def _error_object(body: bytes) -> Mapping[str, Any] | None:
    try:
        decoded = json.loads(body)
    except ValueError:
        return None
    if not isinstance(decoded, dict):
        return None
    inner = decoded.get("error")
    return inner if isinstance(inner, dict) else decoded


def detect_caller_fault(body: bytes) -> str:
    """Which caller fault a 4xx error body describes: context length, content policy or other.

    Understands OpenAI-style (``error.code``/``error.type``/``error.message``) and
    Anthropic-style (``error.type``/``error.message``) bodies; anything else is
    ``bad_request``.
    """
    err = _error_object(body)
    fields = [str(err.get(k, "")) for k in ("code", "type", "message")] if err else []
    text = " ".join(fields).lower() if fields else body[:2000].decode("utf-8", "replace").lower()
    if any(marker in text for marker in _CONTEXT_MARKERS):
        return "context_length"
    if any(marker in text for marker in _POLICY_MARKERS):
        return "content_policy"
    return "bad_request"


def error_detail(body: bytes, *, secret: str | None = None, limit: int = 200) -> str:
    """A short, single-line description of an error body (its ``message`` when JSON).

    Every occurrence of ``secret`` (the API key) is replaced by ``***`` before truncation.
    """
    err = _error_object(body)
    if err and isinstance(err.get("message"), str):
        text = str(err["message"])
    else:
        text = body.decode("utf-8", "replace")
    if secret:
        text = text.replace(secret, "***")
    text = " ".join(text.split())
    return text[:limit]
