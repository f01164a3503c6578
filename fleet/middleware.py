"""Extension points of :func:`fleet.llm_call`: middleware whose hooks do nothing by default.

Budgets, step caches, metrics and Sentry plug in here without editing ``llm_call``. Hooks run
in registration order for ``before_call`` and in the same order for the others.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fleet.errors import FleetError
from fleet.types import Attempt, LLMResult


@dataclass(frozen=True)
class CallContext:
    """What one ``llm_call`` was asked to do.

    ``step`` is the index of this call within its job (0, 1, 2...) when the call runs inside a
    job, so that a redelivered job can find the steps it already paid for.
    """

    task_type: str
    messages: Sequence[Mapping[str, str]]
    session_id: str | None = None
    job_id: str | None = None
    step: int | None = None
    max_tokens: int | None = None
    timeout_s: float | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)


class LLMMiddleware:
    """Base class for ``llm_call`` middleware. Override the hooks you need.

    - ``before_call`` may return an :class:`LLMResult` to answer without calling a provider
      (e.g. a step cache), or raise a :class:`FleetError` (e.g. ``BudgetExceeded``).
    - ``after_attempt`` sees every candidate tried or skipped, in order.
    - ``after_call`` sees the successful result; ``on_failure`` the error raised to the caller.
    """

    def before_call(self, ctx: CallContext) -> LLMResult | None:
        """Called before routing. Return a result to short-circuit the call."""
        return None

    def after_attempt(self, ctx: CallContext, attempt: Attempt) -> None:
        """Called after each candidate was tried, rejected or skipped."""

    def after_call(self, ctx: CallContext, result: LLMResult) -> None:
        """Called once with the successful result (also for short-circuited results)."""

    def on_failure(self, ctx: CallContext, error: FleetError) -> None:
        """Called once with the error about to be raised to the caller."""
