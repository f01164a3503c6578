"""Cost estimates: the two published figures of the issue, pinned, and the pricing rules."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest

from fleet.cost import estimate
from fleet.errors import ConfigError, PresetError, UnknownTaskType
from fleet.registry import Registry, load_registry

JOB = {
    "data_collection": 50_000,
    "content_scraping": 100_000,
    "gap_analysis": 200_000,
    "recommendations": 500_000,
}

ALL_405B = """
[presets.all-405b]
description = "every task on the $1.50 model"

[presets.all-405b.routes]
data_collection = { primary = "nebius/llama-405b", backups = ["sambanova/deepseek-v3"] }
content_scraping = { primary = "nebius/llama-405b", backups = ["sambanova/deepseek-v3"] }
gap_analysis = { primary = "nebius/llama-405b", backups = ["sambanova/deepseek-v3"] }
recommendations = { primary = "nebius/llama-405b", backups = ["sambanova/deepseek-v3"] }
classification = { primary = "nebius/llama-405b", backups = ["sambanova/deepseek-v3"] }
structured_extraction = { primary = "nebius/llama-405b", backups = ["sambanova/deepseek-v3"] }
"""


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    shipped = resources.files("fleet").joinpath("data/registry.toml").read_text()
    path = tmp_path_factory.mktemp("reg") / "registry.toml"
    path.write_text(shipped + ALL_405B)
    return load_registry(path, environ={})


def test_all_on_the_1_50_model_costs_1_275(registry: Registry) -> None:
    est = estimate(registry, "all-405b", JOB)
    assert round(est.total_usd, 9) == 1.275
    assert est.total_tokens == 850_000
    assert [t.cost_usd for t in est.tasks] == [0.075, 0.15, 0.3, 0.75]
    assert {t.model for t in est.tasks} == {"nebius/llama-405b"}


def test_8b_8b_32b_and_0_50_costs_0_269_not_0_069(registry: Registry) -> None:
    est = estimate(registry, "sambanova-optimized", JOB)
    assert [t.model for t in est.tasks] == [
        "sambanova/llama-8b",
        "sambanova/llama-8b",
        "sambanova/qwen-32b",
        "sambanova/deepseek-v3",
    ]
    assert [t.price_per_1m_usd for t in est.tasks] == [0.02, 0.02, 0.08, 0.5]
    assert [t.cost_usd for t in est.tasks] == [0.001, 0.002, 0.016, 0.25]
    assert round(est.total_usd, 9) == 0.269
    assert est.total_usd != pytest.approx(0.069)


def test_the_shipped_file_prices_the_same_without_the_extra_preset() -> None:
    est = estimate(load_registry(environ={}), "sambanova-optimized", JOB)
    assert round(est.total_usd, 9) == 0.269


def test_without_counts_every_task_is_priced_at_its_token_budget(registry: Registry) -> None:
    est = estimate(registry, "local")
    assert [t.task_type for t in est.tasks] == list(registry.tasks)
    assert [t.tokens for t in est.tasks] == [t.token_budget for t in registry.tasks.values()]
    expected = sum(t.tokens * t.price_per_1m_usd / 1e6 for t in est.tasks)
    assert est.total_usd == pytest.approx(expected)


def test_completion_share_blends_different_input_and_output_prices(tmp_path: Path) -> None:
    shipped = resources.files("fleet").joinpath("data/registry.toml").read_text()
    text = shipped.replace(
        'api_name = "sim-small"\ntier = "tiny"\ninput_cost_per_1m_usd = 0.10\n'
        "output_cost_per_1m_usd = 0.10",
        'api_name = "sim-small"\ntier = "tiny"\ninput_cost_per_1m_usd = 1.00\n'
        "output_cost_per_1m_usd = 3.00",
    )
    path = tmp_path / "r.toml"
    path.write_text(text)
    reg = load_registry(path, environ={})
    tokens = {"classification": 1_000_000}
    assert estimate(reg, "local", tokens).total_usd == 2.0
    assert estimate(reg, "local", tokens, completion_share=0.25).total_usd == 1.5
    assert estimate(reg, "local", tokens, completion_share=1).total_usd == 3.0


def test_bad_input_names_the_problem(registry: Registry) -> None:
    with pytest.raises(PresetError, match="'nope'"):
        estimate(registry, "nope", JOB)
    with pytest.raises(UnknownTaskType, match="'summarise'"):
        estimate(registry, "local", {"summarise": 10})
    with pytest.raises(ConfigError, match="'gap_analysis' is -1"):
        estimate(registry, "local", {"gap_analysis": -1})
    with pytest.raises(ConfigError, match="completion_share=2"):
        estimate(registry, "local", JOB, completion_share=2)
