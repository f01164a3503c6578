"""The model registry: the shipped file, lookups, and every validation error with its location."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from fleet.errors import PresetError, RegistryError, UnknownTaskType
from fleet.registry import ModelInfo, Registry, load_registry

BASE = """\
default_preset = "p"

[breaker]
window_ms = 10000
buckets = 10

[providers.a]
kind = "simulated"
base_url = "http://127.0.0.1:8701/v1"

[providers.b]
kind = "simulated"
base_url = "http://127.0.0.1:8702/v1"

[providers.real]
kind = "openai"
base_url = "https://api.example.invalid/v1"
api_key_env = "FLEET_TEST_REAL_KEY"

[[models]]
name = "m1"
provider = "a"
api_name = "m1-api"
tier = "tiny"
input_cost_per_1m_usd = 0.1
output_cost_per_1m_usd = 0.1
tokens_per_s = 100
context_window = 8192

[[models]]
name = "m2"
provider = "b"
api_name = "m2-api"
tier = "small"
input_cost_per_1m_usd = 0.2
output_cost_per_1m_usd = 0.2
tokens_per_s = 100
context_window = 8192

[[models]]
name = "m3"
provider = "real"
api_name = "m3-api"
tier = "large"
input_cost_per_1m_usd = 1.0
output_cost_per_1m_usd = 1.0
tokens_per_s = 50
context_window = 4096

[tasks.t1]
tier = "tiny"
temperature = 0.0
max_tokens = 1000
token_budget = 10000
description = "first"

[tasks.t2]
tier = "small"
temperature = 0.5
max_tokens = 2000
token_budget = 20000
description = "second"

[presets.p.routes]
t1 = { primary = "a/m1", backups = ["b/m2"] }
t2 = { primary = "b/m2", backups = ["a/m1"] }

[presets.r.routes]
t1 = { primary = "real/m3", backups = ["a/m1"] }
t2 = { primary = "real/m3", backups = ["b/m2"] }
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "registry.toml"
    path.write_text(text)
    return path


def line_of(text: str, needle: str, occurrence: int = 1) -> int:
    """1-based line of the ``occurrence``-th line containing ``needle``."""
    hits = [i for i, line in enumerate(text.splitlines(), start=1) if needle in line]
    return hits[occurrence - 1]


def problems_of(tmp_path: Path, text: str, **kwargs: object) -> list[str]:
    with pytest.raises(RegistryError) as info:
        load_registry(write(tmp_path, text), environ={}, **kwargs)  # type: ignore[arg-type]
    assert info.value.problems, "a RegistryError must list its problems"
    return info.value.problems


def only(problems: list[str], prefix: str) -> str:
    hits = [p for p in problems if p.startswith(prefix)]
    assert len(hits) == 1, f"expected one problem at {prefix!r}, got {problems}"
    return hits[0]


# ---------------------------------------------------------------- the shipped registry


def test_shipped_registry_has_the_issue_models_tasks_and_presets() -> None:
    reg = load_registry(environ={})
    real = {k for k, m in reg.models.items() if reg.providers[m.provider].kind != "simulated"}
    assert len(real) == 11
    assert {"sambanova/llama-8b", "nebius/llama-8b", "nebius/llama-405b"} <= real
    assert set(reg.tasks) == {
        "data_collection",
        "content_scraping",
        "gap_analysis",
        "recommendations",
        "classification",
        "structured_extraction",
    }
    assert {"sambanova-optimized", "nebius-balanced", "mixed-optimal", "local"} == set(reg.presets)
    assert reg.default_preset == "local"
    assert reg.warnings == []
    m = reg.model("sambanova/qwen-32b")
    assert (m.api_name, m.tier, m.input_cost_per_1m_usd, m.context_window) == (
        "Qwen3-32B",
        "small",
        0.08,
        32768,
    )
    assert reg.providers["sambanova"].api_key_env == "SAMBANOVA_API_KEY"
    assert reg.providers["nebius"].api_key_env == "NEBIUS_API_KEY"


def test_shipped_presets_back_up_on_the_other_provider() -> None:
    reg = load_registry(environ={})
    for name in ("sambanova-optimized", "nebius-balanced", "mixed-optimal", "local"):
        for task_type in reg.tasks:
            primary, *backups = reg.candidates(name, task_type)
            assert backups, (name, task_type)
            assert all(b.provider != primary.provider for b in backups), (name, task_type)


def test_local_preset_is_two_simulated_providers_on_loopback() -> None:
    reg = load_registry(environ={})
    providers = reg.providers_of("local")
    assert [p.name for p in providers] == ["sim-backup", "sim-primary"]
    assert all(p.kind == "simulated" and p.api_key_env is None for p in providers)
    assert {p.base_url for p in providers} == {
        "http://127.0.0.1:8701/v1",
        "http://127.0.0.1:8702/v1",
    }
    sim_models = [m for m in reg.models.values() if m.provider.startswith("sim-")]
    assert len({m.tier for m in sim_models}) >= 3
    assert len({m.context_window for m in sim_models}) >= 2


def test_task_profiles_choose_documented_failure_policies() -> None:
    reg = load_registry(environ={})
    assert reg.task("classification").failure_policy == "degrade"
    assert reg.task("classification").fallback_output
    assert reg.task("recommendations").failure_policy == "retry_later"
    assert reg.task("structured_extraction").failure_policy == "fail"
    assert reg.task("data_collection").failure_policy == "escalate"
    assert reg.task("data_collection").tier == "tiny"
    assert reg.task("recommendations").tier == "large"


def test_lookups_raise_errors_naming_what_is_known() -> None:
    reg = load_registry(environ={})
    with pytest.raises(UnknownTaskType, match=r"'summarise'.*classification"):
        reg.task("summarise")
    with pytest.raises(PresetError, match=r"'fast'.*mixed-optimal"):
        reg.preset("fast")
    with pytest.raises(RegistryError, match=r"'llama-8b'.*sambanova/llama-8b"):
        reg.model("llama-8b")
    with pytest.raises(UnknownTaskType):
        reg.candidates("local", "summarise")


def test_candidates_are_primary_then_backups_in_order() -> None:
    reg = load_registry(environ={})
    keys = [m.key for m in reg.candidates("mixed-optimal", "recommendations")]
    assert keys == ["sambanova/gpt-120b", "nebius/deepseek-chat-v3", "nebius/llama-405b"]


def test_policy_for_layers_defaults_provider_and_model_overrides() -> None:
    reg = load_registry(environ={})
    assert reg.policy_for("nebius").slow_call_ms == reg.breaker.slow_call_ms
    assert reg.policy_for("nebius", "deepseek-r1").slow_call_ms == 120_000
    assert reg.policy_for("nebius", "nebius/deepseek-r1").slow_call_ms == 120_000
    sim = reg.policy_for("sim-primary", "sim-large")
    assert sim.open_base_ms == 1000
    assert sim.window_ms == reg.breaker.window_ms


def test_model_cost_prices_prompt_and_completion_separately() -> None:
    model = ModelInfo(
        name="x",
        provider="p",
        api_name="x",
        tier="tiny",
        input_cost_per_1m_usd=1.0,
        output_cost_per_1m_usd=3.0,
        tokens_per_s=1,
        context_window=10,
    )
    assert model.key == "p/x"
    assert model.cost_usd(1_000_000, 500_000) == pytest.approx(2.5)


def test_base_file_is_valid(tmp_path: Path) -> None:
    reg = load_registry(write(tmp_path, BASE), environ={})
    assert isinstance(reg, Registry)
    assert reg.source.endswith("registry.toml")


# ---------------------------------------------------------------- validation errors


def test_unknown_model_in_preset_names_path_and_line(tmp_path: Path) -> None:
    text = BASE.replace(
        'backups = ["a/m1"] }\n\n[presets.r', 'backups = ["b/m2", "a/nope"] }\n\n[presets.r'
    )
    problem = only(problems_of(tmp_path, text), "presets.p.routes.t2.backups[1]")
    assert f"(line {line_of(text, 'a/nope')})" in problem
    assert "unknown model 'a/nope'" in problem


def test_short_model_name_gets_a_hint(tmp_path: Path) -> None:
    text = BASE.replace('t1 = { primary = "a/m1"', 't1 = { primary = "m1"')
    problem = only(problems_of(tmp_path, text), "presets.p.routes.t1.primary")
    assert "did you mean a/m1" in problem


def test_unknown_provider_of_a_model(tmp_path: Path) -> None:
    text = BASE.replace('provider = "b"', 'provider = "zzz"')
    problems = problems_of(tmp_path, text)
    problem = only(problems, "models[1].provider")
    assert "unknown provider 'zzz'" in problem
    line = line_of(text, 'provider = "zzz"')
    assert f"(line {line})" in problem
    # the model is dropped, so presets that use it are reported too
    assert any(p.startswith("presets.p.routes.t1.backups[0]") for p in problems)


def test_task_type_missing_from_a_preset(tmp_path: Path) -> None:
    text = BASE.replace('t2 = { primary = "b/m2", backups = ["a/m1"] }\n', "")
    problem = only(problems_of(tmp_path, text), "presets.p.routes")
    assert "no route for task type 't2'" in problem
    assert f"(line {line_of(text, '[presets.p.routes]')})" in problem


def test_route_for_an_undeclared_task_type(tmp_path: Path) -> None:
    text = BASE.replace(
        "[presets.r.routes]\n", '[presets.r.routes]\nt9 = { primary = "a/m1", backups = [] }\n'
    )
    problem = only(problems_of(tmp_path, text), "presets.r.routes.t9")
    assert "unknown task type 't9'" in problem


def test_backup_equal_to_primary(tmp_path: Path) -> None:
    text = BASE.replace(
        't1 = { primary = "a/m1", backups = ["b/m2"] }',
        't1 = { primary = "a/m1", backups = ["b/m2", "a/m1"] }',
    )
    problem = only(problems_of(tmp_path, text), "presets.p.routes.t1.backups[1]")
    assert "is the primary itself" in problem
    line = line_of(text, 'backups = ["b/m2", "a/m1"]')
    assert f"(line {line})" in problem


def test_backup_listed_twice(tmp_path: Path) -> None:
    text = BASE.replace(
        't2 = { primary = "b/m2", backups = ["a/m1"] }',
        't2 = { primary = "b/m2", backups = ["a/m1", "a/m1"] }',
    )
    problem = only(problems_of(tmp_path, text), "presets.p.routes.t2.backups[1]")
    assert "listed twice" in problem


def test_max_tokens_over_a_models_context_window(tmp_path: Path) -> None:
    text = BASE.replace("max_tokens = 2000", "max_tokens = 5000")
    problems = problems_of(tmp_path, text, active_preset="p")
    # m3 (4096) is t2's primary in preset r; m1/m2 (8192) fit
    problem = only(problems, "presets.r.routes.t2.primary")
    assert "max_tokens=5000 exceeds the context window of real/m3 (4096)" in problem
    assert "lower tasks.t2.max_tokens" in problem
    assert not any(p.startswith("presets.p.") for p in problems)


def test_duplicate_model_within_a_provider(tmp_path: Path) -> None:
    text = BASE.replace('name = "m2"', 'name = "m1"').replace('provider = "b"', 'provider = "a"')
    text = text.replace('"b/m2"', '"a/m1"').replace('backups = ["a/m1"]', "backups = []")
    problem = only(problems_of(tmp_path, text), "models[1].name")
    assert "duplicate model 'a/m1'" in problem
    assert f"first defined at models[0] (line {line_of(text, '[[models]]')})" in problem
    second = line_of(text, 'name = "m1"', 2)
    assert f"(line {second})" in problem


def test_duplicate_table_is_reported_with_its_line(tmp_path: Path) -> None:
    text = BASE + '\n[tasks.t1]\ntier = "tiny"\n'
    problems = problems_of(tmp_path, text)
    assert "line" in problems[0]
    assert "t1" in problems[0]


def test_degrade_without_fallback_output(tmp_path: Path) -> None:
    text = BASE.replace(
        'description = "first"', 'description = "first"\nfailure_policy = "degrade"'
    )
    problem = only(problems_of(tmp_path, text), "tasks.t1.fallback_output")
    assert "needs fallback_output" in problem
    assert f"(line {line_of(text, '[tasks.t1]')})" in problem


def test_invalid_breaker_overrides_for_provider_and_model(tmp_path: Path) -> None:
    text = BASE.replace(
        'base_url = "http://127.0.0.1:8702/v1"\n',
        'base_url = "http://127.0.0.1:8702/v1"\nbreaker = { failure_rate_threshold = 7 }\n',
    ).replace("context_window = 4096\n", "context_window = 4096\nbreaker = { windw_ms = 5000 }\n")
    problems = problems_of(tmp_path, text)
    provider = only(problems, "providers.b.breaker.failure_rate_threshold")
    assert "less than or equal to 1" in provider
    assert f"(line {line_of(text, 'failure_rate_threshold = 7')})" in provider
    model = only(problems, "models[2].breaker.windw_ms")
    assert "Extra inputs are not permitted" in model


def test_incoherent_breaker_defaults(tmp_path: Path) -> None:
    text = BASE.replace("buckets = 10", "buckets = 7")
    problem = only(problems_of(tmp_path, text), "breaker")
    assert "must be a multiple of buckets" in problem
    assert f"(line {line_of(text, '[breaker]')})" in problem


def test_missing_api_key_for_the_active_preset_only(tmp_path: Path) -> None:
    path = write(tmp_path, BASE)
    load_registry(path, environ={})  # default preset p uses no real provider
    with pytest.raises(RegistryError) as info:
        load_registry(path, environ={}, active_preset="r")
    (problem,) = info.value.problems
    assert problem.startswith(f"providers.real.api_key_env (line {line_of(BASE, 'api_key_env')})")
    assert "FLEET_TEST_REAL_KEY is not set" in problem
    assert "'r'" in problem
    load_registry(path, environ={"FLEET_TEST_REAL_KEY": "k"}, active_preset="r")


def test_real_provider_without_api_key_env(tmp_path: Path) -> None:
    text = BASE.replace('api_key_env = "FLEET_TEST_REAL_KEY"\n', "")
    problem = only(problems_of(tmp_path, text), "providers.real.api_key_env")
    assert "api_key_env is required" in problem


def test_unknown_default_and_active_preset(tmp_path: Path) -> None:
    text = BASE.replace('default_preset = "p"', 'default_preset = "nope"')
    problems = problems_of(tmp_path, text, active_preset="ghost")
    assert "'nope' is not a preset" in only(problems, "default_preset (line 1)")
    assert "'ghost' is not defined" in only(problems, "presets")


def test_field_typo_and_unknown_top_level_key(tmp_path: Path) -> None:
    text = "colour = 1\n" + BASE.replace("tokens_per_s = 50", "tokens_per_sec = 50")
    problems = problems_of(tmp_path, text)
    assert "unknown top-level key" in only(problems, "colour (line 1)")
    assert "Extra inputs" in only(problems, "models[2].tokens_per_sec")
    assert "Field required" in only(problems, "models[2].tokens_per_s ")


def test_every_problem_is_listed_at_once(tmp_path: Path) -> None:
    text = (
        BASE.replace("buckets = 10", "buckets = 7")
        .replace('provider = "b"', 'provider = "zzz"')
        .replace('description = "first"', 'description = "first"\nfailure_policy = "degrade"')
    )
    with pytest.raises(RegistryError) as info:
        load_registry(write(tmp_path, text), environ={}, active_preset="r")
    message = str(info.value)
    for where in (
        "breaker (line",
        "models[1].provider",
        "tasks.t1.fallback_output",
        "providers.real.api_key_env",
    ):
        assert where in message


def test_toml_syntax_error_has_line_and_column(tmp_path: Path) -> None:
    text = BASE.replace('tier = "tiny"', "tier = tiny", 1)
    problems = problems_of(tmp_path, text)
    assert f"line {line_of(text, 'tier = tiny')}, column" in problems[0]


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="cannot read registry file"):
        load_registry(tmp_path / "missing.toml")


def test_shared_provider_backup_is_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    text = BASE.replace(
        't1 = { primary = "a/m1", backups = ["b/m2"] }',
        't1 = { primary = "real/m3", backups = ["b/m2"] }',
    ).replace(
        '[presets.r.routes]\nt1 = { primary = "real/m3", backups = ["a/m1"] }',
        '[presets.r.routes]\nt1 = { primary = "a/m1", backups = ["b/m2"] }',
    )
    text = text.replace('name = "m2"\nprovider = "b"', 'name = "m2"\nprovider = "real"')
    text = text.replace('"b/m2"', '"real/m2"')
    with caplog.at_level(logging.WARNING, logger="fleet.registry"):
        reg = load_registry(write(tmp_path, text), environ={"FLEET_TEST_REAL_KEY": "k"})
    shared = [w for w in reg.warnings if "shares provider 'real'" in w]
    assert shared and shared[0].startswith("presets.p.routes.t1.backups[0] (line")
    assert any("one provider outage takes both" in r.getMessage() for r in caplog.records)
