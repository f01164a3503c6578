"""Fault modes of the simulated provider, its shared state, and the answers it gives.

Standard library only: this package runs in a minimal container without fleet's deps.

Modes (switchable at runtime through the control endpoint):

=================  ===========================================================================
healthy            200 with a deterministic answer and usage
no_usage           200 like healthy, but without the ``usage`` object
down               503 Service Unavailable
refuse             the API port stops listening (connection refused); back on any other mode
rate_limited       429 with ``Retry-After: <retry_after_s>``
slow               answers (healthy) after ``slow_delay_s`` (or at the next mode change)
auth_fail          401 with an OpenAI-style ``invalid_api_key`` error
garbage            200 with a body that is not JSON
flaky              503 with probability ``p`` (seeded RNG), healthy otherwise
hang               accepts and never answers; drops the connection at the next mode change
context_length     400 with ``code: context_length_exceeded`` (a caller fault)
content_policy     400 with ``code: content_filter`` (a caller fault)
=================  ===========================================================================
"""

from __future__ import annotations

import json
import random
import threading
from dataclasses import asdict, dataclass, replace
from typing import Any

MODES: tuple[str, ...] = (
    "healthy",
    "no_usage",
    "down",
    "refuse",
    "rate_limited",
    "slow",
    "auth_fail",
    "garbage",
    "flaky",
    "hang",
    "context_length",
    "content_policy",
)
COMPLETION_TOKENS = 16
"""completion_tokens of a healthy answer is ``min(max_tokens, COMPLETION_TOKENS)``."""
CONTEXT_WINDOW_TOKENS = 8192
"""Context window reported by ``context_length`` mode errors."""


def default_control_port(port: int) -> int:
    """The control port used when none is given: ``port + 10000`` (``port - 10000`` above 55535)."""
    return port + 10000 if port + 10000 <= 65535 else port - 10000


@dataclass(frozen=True)
class ModeSettings:
    """The active mode and its parameters. ``p`` is used by ``flaky`` only."""

    mode: str = "healthy"
    p: float = 0.5
    retry_after_s: float = 1.0
    latency_ms: float = 0.0
    slow_delay_s: float = 60.0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode {self.mode!r} is unknown; use one of: {', '.join(MODES)}")
        if not 0.0 <= self.p <= 1.0:
            raise ValueError(f"p must be between 0 and 1 (failure probability), got {self.p}")
        for field in ("retry_after_s", "latency_ms", "slow_delay_s"):
            if getattr(self, field) < 0:
                raise ValueError(f"{field} must be >= 0, got {getattr(self, field)}")


class SimState:
    """Thread-safe mode, counters and seeded RNG shared by every request handler."""

    def __init__(self, settings: ModeSettings, seed: int = 0) -> None:
        self._cond = threading.Condition()
        self._settings = settings
        self._generation = 0
        self._stopped = False
        self._rng = random.Random(seed)
        self._counts = dict.fromkeys(MODES, 0)
        self._total = 0

    @property
    def settings(self) -> ModeSettings:
        """The current mode settings."""
        with self._cond:
            return self._settings

    def update(self, **changes: Any) -> tuple[ModeSettings, ModeSettings]:
        """Apply ``changes`` (validated); wake waiting handlers. Returns (old, new)."""
        with self._cond:
            old = self._settings
            new = replace(old, **changes)
            self._settings = new
            self._generation += 1
            self._cond.notify_all()
            return old, new

    def begin(self) -> tuple[ModeSettings, int, float]:
        """Count one request under the current mode: returns (settings, generation, draw)."""
        with self._cond:
            self._counts[self._settings.mode] += 1
            self._total += 1
            return self._settings, self._generation, self._rng.random()

    def wait_change(self, generation: int, timeout_s: float | None) -> bool:
        """Block until the mode changes after ``generation`` or the server stops.

        Returns True when woken by a change or stop, False when ``timeout_s`` passed.
        """
        with self._cond:
            return self._cond.wait_for(
                lambda: self._stopped or self._generation != generation, timeout=timeout_s
            )

    def wait_stopped(self, timeout_s: float) -> bool:
        """Sleep up to ``timeout_s`` unless the server stops (True when stopped)."""
        with self._cond:
            return self._cond.wait_for(lambda: self._stopped, timeout=timeout_s)

    @property
    def stopped(self) -> bool:
        """True once :meth:`stop` was called."""
        with self._cond:
            return self._stopped

    def stop(self) -> None:
        """Wake every waiting handler for shutdown."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def reset_counts(self) -> None:
        """Zero the per-mode counters and the total."""
        with self._cond:
            self._counts = dict.fromkeys(MODES, 0)
            self._total = 0

    def snapshot(self) -> dict[str, Any]:
        """Mode settings, counts per mode and total requests, as JSON-ready data."""
        with self._cond:
            data = asdict(self._settings)
            data["counts"] = dict(self._counts)
            data["total_requests"] = self._total
            return data


@dataclass(frozen=True)
class Reply:
    """An HTTP answer to send."""

    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


def _json(status: int, data: Any, *headers: tuple[str, str]) -> Reply:
    return Reply(
        status, json.dumps(data).encode(), (("Content-Type", "application/json"), *headers)
    )


def count_words(request: dict[str, Any]) -> int:
    """Prompt tokens: whitespace-separated words of every message (and ``system``)."""
    words = 0
    for message in request.get("messages") or []:
        content = message.get("content", "") if isinstance(message, dict) else ""
        if isinstance(content, list):  # Anthropic content blocks
            content = " ".join(str(b.get("text", "")) for b in content if isinstance(b, dict))
        words += len(str(content).split())
    system = request.get("system")
    if isinstance(system, str):
        words += len(system.split())
    return words


def healthy_reply(protocol: str, request: dict[str, Any], name: str, usage: bool) -> Reply:
    """The deterministic success answer for ``protocol`` (``openai`` or ``anthropic``)."""
    model = str(request.get("model", "unknown-model"))
    max_tokens = int(request.get("max_tokens") or COMPLETION_TOKENS)
    prompt_tokens = count_words(request)
    completion_tokens = max(0, min(max_tokens, COMPLETION_TOKENS))
    text = f"Simulated answer from provider {name} for model {model}."
    if protocol == "anthropic":
        body: dict[str, Any] = {
            "id": f"msg_sim_{name}",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn",
        }
        if usage:
            body["usage"] = {"input_tokens": prompt_tokens, "output_tokens": completion_tokens}
        return _json(200, body)
    body = {
        "id": f"chatcmpl-sim-{name}",
        "object": "chat.completion",
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        ],
    }
    if usage:
        body["usage"] = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
    return _json(200, body)


def error_reply(protocol: str, status: int, kind: str, code: str, message: str) -> Reply:
    """An error answer in the protocol's shape (OpenAI ``code``, Anthropic ``error.type``)."""
    if protocol == "anthropic":
        return _json(status, {"type": "error", "error": {"type": kind, "message": message}})
    return _json(status, {"error": {"message": message, "type": kind, "code": code}})


def fault_reply(  # noqa: PLR0911 - one return per fault mode
    settings: ModeSettings,
    protocol: str,
    request: dict[str, Any],
    draw: float,
    presented_key: str = "",
) -> Reply | None:
    """The answer of a fault mode, or None when the request should be answered healthily.

    ``slow``, ``hang`` and ``refuse`` are handled by the server (they are about time and
    sockets, not about the answer). ``auth_fail`` echoes ``presented_key`` in its message,
    as some real providers echo (part of) a rejected key: clients must mask it.
    """
    mode = settings.mode
    if mode == "down" or (mode == "flaky" and draw < settings.p):
        return error_reply(protocol, 503, "server_error", "service_unavailable", "simulated outage")
    if mode == "rate_limited":
        reply = error_reply(protocol, 429, "rate_limit_error", "rate_limit_exceeded", "slow down")
        retry = f"{settings.retry_after_s:g}"
        return replace(reply, headers=(*reply.headers, ("Retry-After", retry)))
    if mode == "auth_fail":
        message = f"Incorrect API key provided: {presented_key or '(none)'}"
        return error_reply(protocol, 401, "authentication_error", "invalid_api_key", message)
    if mode == "garbage":
        return Reply(200, b"<html>\x00not json{{{", (("Content-Type", "application/json"),))
    if mode == "context_length":
        tokens = count_words(request) + int(request.get("max_tokens") or 0)
        message = (
            f"This model's maximum context length is {CONTEXT_WINDOW_TOKENS} tokens; "
            f"prompt is too long: {tokens} tokens requested"
        )
        kind = "invalid_request_error"
        return error_reply(protocol, 400, kind, "context_length_exceeded", message)
    if mode == "content_policy":
        message = "The request was rejected by the content policy"
        return error_reply(protocol, 400, "invalid_request_error", "content_filter", message)
    return None
