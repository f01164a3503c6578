"""Cost estimates of a job under a preset: per task type and for the whole job.

Pricing assumption: a token count given for a task is the **total** of prompt and completion
tokens, priced at the model's blended price
``input * (1 - completion_share) + output * completion_share`` per 1M tokens
(``completion_share`` defaults to 0.5; the shipped prices have input = output, so the blend is
the list price). Only the primary model of each route is priced: backups cost money only when
the primary fails. Arithmetic is exact (:class:`decimal.Decimal`) and rounded to 1e-9 USD.

Example pinned by the tests: 50k/100k/200k/500k tokens for data_collection/content_scraping/
gap_analysis/recommendations on 8B/8B/32B/$0.50 models cost $0.269, not $0.069.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal

from pydantic import BaseModel, ConfigDict

from fleet.errors import ConfigError
from fleet.registry import ModelInfo, Registry

_MILLION = Decimal(1_000_000)
_QUANTUM = Decimal("0.000000001")


class TaskCost(BaseModel):
    """The estimated cost of one task type of a job on its primary model."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    task_type: str
    model: str
    tokens: int
    price_per_1m_usd: float
    cost_usd: float


class Estimate(BaseModel):
    """Cost of one job under ``preset``: ``tasks`` in the order given, ``total_usd`` the sum."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    preset: str
    completion_share: float
    tasks: list[TaskCost]
    total_usd: float
    total_tokens: int


def blended_price(model: ModelInfo, completion_share: float = 0.5) -> Decimal:
    """USD per 1M tokens of ``model`` when ``completion_share`` of the tokens are output."""
    share = Decimal(str(completion_share))
    return (
        Decimal(str(model.input_cost_per_1m_usd)) * (1 - share)
        + Decimal(str(model.output_cost_per_1m_usd)) * share
    )


def estimate(
    registry: Registry,
    preset: str,
    tokens: Mapping[str, int] | None = None,
    *,
    completion_share: float = 0.5,
) -> Estimate:
    """Estimate a job's cost under ``preset``.

    ``tokens`` maps task type -> total tokens (prompt + completion) the job spends on it; when
    omitted, every task type of the registry is counted at its ``token_budget`` (worst case).
    Raises :class:`~fleet.errors.PresetError` / :class:`~fleet.errors.UnknownTaskType` for
    unknown names and :class:`~fleet.errors.ConfigError` for negative counts or a share
    outside [0, 1].
    """
    registry.preset(preset)
    if not 0 <= completion_share <= 1:
        raise ConfigError(f"completion_share={completion_share} must be between 0 and 1")
    if tokens is None:
        tokens = {name: task.token_budget for name, task in registry.tasks.items()}
    lines: list[TaskCost] = []
    total = Decimal(0)
    for task_type, count in tokens.items():
        if count < 0:
            raise ConfigError(f"tokens for {task_type!r} is {count}; give a count >= 0")
        model = registry.candidates(preset, task_type)[0]
        price = blended_price(model, completion_share)
        cost = (Decimal(count) * price / _MILLION).quantize(_QUANTUM)
        total += cost
        lines.append(
            TaskCost(
                task_type=task_type,
                model=model.key,
                tokens=count,
                price_per_1m_usd=float(price),
                cost_usd=float(cost),
            )
        )
    return Estimate(
        preset=preset,
        completion_share=completion_share,
        tasks=lines,
        total_usd=float(total),
        total_tokens=sum(tokens.values()),
    )


__all__ = ["Estimate", "TaskCost", "blended_price", "estimate"]
