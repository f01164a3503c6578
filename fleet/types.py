"""Value types returned by :func:`fleet.llm_call` and carried by its exceptions."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

BreakerDecision = Literal["allow", "probe", "reject", "degraded", "bypass"]


class Attempt(BaseModel):
    """One candidate model tried (or skipped) for one ``llm_call``.

    ``outcome`` is the breaker outcome class (``success``, ``failure``, ``rate_limited``,
    ``credential``, ``ignored``), or ``rejected`` / ``skipped`` when no request was sent.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str
    provider: str
    outcome: str
    status: int | None = None
    latency_ms: float = 0.0
    breaker: BreakerDecision = "allow"
    detail: str = ""
    retry_after_s: float | None = None


class Usage(BaseModel):
    """Token counts of a call. ``estimated`` is True when the provider reported none."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    prompt_tokens: int
    completion_tokens: int
    estimated: bool = False

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens


class LLMResult(BaseModel):
    """The answer of a successful :func:`fleet.llm_call`, with everything it cost."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    text: str
    model: str
    provider: str
    task_type: str
    usage: Usage
    cost_usd: float
    latency_ms: float
    attempts: list[Attempt]
    preset: str
    preset_version: int
