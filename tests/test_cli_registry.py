"""``fleet registry ...`` and ``fleet preset ...``: output, --json, exit codes, real Redis."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner, Result

from fleet.cli import registry_cmd
from fleet.settings import FleetSettings
from fleet.testing import free_port

NO_KEYS: dict[str, str | None] = {
    "SAMBANOVA_API_KEY": None,
    "NEBIUS_API_KEY": None,
    "FLEET_REGISTRY_PATH": None,
    "COLUMNS": "200",
}
JOB = [
    "--tokens", "data_collection=50k", "--tokens", "content_scraping=100000",
    "--tokens", "gap_analysis=200k", "--tokens", "recommendations=500k",
]  # fmt: skip


def run(args: list[str], **env: str | None) -> Result:
    app = typer.Typer()
    registry_cmd.register(app)
    return CliRunner().invoke(app, args, env={**NO_KEYS, **env})


@pytest.fixture
def redis_env(fleet_settings: FleetSettings) -> dict[str, str | None]:
    return {
        "FLEET_REDIS_URL": fleet_settings.redis_url,
        "FLEET_NAMESPACE": fleet_settings.namespace,
        "USER": "tester",
    }


def bad_registry(tmp_path: Path) -> Path:
    shipped = Path(registry_cmd.__file__).parents[1] / "data" / "registry.toml"
    text = shipped.read_text().replace('"nebius/llama-405b"]', '"nebius/llama-406b"]')
    path = tmp_path / "bad.toml"
    path.write_text(text)
    return path


# ---------------------------------------------------------------- registry


def test_show_json_parses_and_lists_everything() -> None:
    result = run(["registry", "show", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["default_preset"] == "local"
    assert len(data["models"]) == 15
    assert data["models"]["nebius/llama-405b"]["input_cost_per_1m_usd"] == 1.5
    assert set(data["presets"]) == {
        "local",
        "sambanova-optimized",
        "nebius-balanced",
        "mixed-optimal",
    }


def test_show_tables_for_people() -> None:
    result = run(["registry", "show"])
    assert result.exit_code == 0, result.output
    for text in (
        "providers",
        "sambanova/deepseek-v3",
        "local (default)",
        "degrade ('unclassified')",
    ):
        assert text in result.stdout


def test_show_with_an_invalid_registry_is_a_config_error(tmp_path: Path) -> None:
    result = run(["registry", "show", "--registry", str(bad_registry(tmp_path))])
    assert result.exit_code == 2
    assert "nebius/llama-406b" in result.stderr


def test_validate_ok_and_failing_with_locations(tmp_path: Path) -> None:
    ok = run(["registry", "validate"])
    assert ok.exit_code == 0, ok.output
    assert "15 models, 6 task types, 4 presets" in ok.stdout

    bad = run(["registry", "validate", "--registry", str(bad_registry(tmp_path))])
    assert bad.exit_code == 1
    assert "presets.mixed-optimal.routes.recommendations.backups[1] (line" in bad.stderr

    as_json = run(["registry", "validate", "--json", "--registry", str(bad_registry(tmp_path))])
    assert as_json.exit_code == 1
    data = json.loads(as_json.stdout)
    assert data["ok"] is False
    assert any("unknown model 'nebius/llama-406b'" in p for p in data["problems"])


def test_validate_checks_credentials_of_the_chosen_preset() -> None:
    missing = run(["registry", "validate", "--preset", "nebius-balanced"])
    assert missing.exit_code == 1
    assert "NEBIUS_API_KEY is not set" in missing.stderr
    assert "SAMBANOVA_API_KEY is not set" in missing.stderr
    present = run(
        ["registry", "validate", "--preset", "nebius-balanced"],
        NEBIUS_API_KEY="k",
        SAMBANOVA_API_KEY="k",
    )
    assert present.exit_code == 0, present.output


def test_estimate_prints_the_right_total() -> None:
    table = run(["registry", "estimate", "--preset", "sambanova-optimized", *JOB])
    assert table.exit_code == 0, table.output
    assert "0.269000" in table.stdout
    as_json = run(["registry", "estimate", "--preset", "sambanova-optimized", "--json", *JOB])
    data = json.loads(as_json.stdout)
    assert round(data["total_usd"], 9) == 0.269
    assert [t["tokens"] for t in data["tasks"]] == [50_000, 100_000, 200_000, 500_000]


def test_estimate_usage_errors_exit_2() -> None:
    bad_tokens = run(["registry", "estimate", "--preset", "local", "--tokens", "gap_analysis"])
    assert bad_tokens.exit_code == 2
    assert "expected TASK=N" in bad_tokens.output
    bad_preset = run(["registry", "estimate", "--preset", "cheapest"])
    assert bad_preset.exit_code == 2
    assert "unknown preset 'cheapest'" in bad_preset.stderr
    bad_task = run(["registry", "estimate", "--preset", "local", "--tokens", "summarise=5"])
    assert bad_task.exit_code == 2
    assert "unknown task type 'summarise'" in bad_task.stderr


def test_invalid_settings_exit_2_naming_the_variable() -> None:
    result = run(["registry", "show"], FLEET_REDIS_URL="localhost:6379")
    assert result.exit_code == 2
    assert "FLEET_REDIS_URL" in result.stderr


@pytest.mark.parametrize(
    "command",
    [["registry", "show"], ["registry", "validate"], ["registry", "estimate"],
     ["preset", "use"], ["preset", "show"]],
)  # fmt: skip
def test_every_command_has_help(command: list[str]) -> None:
    result = run([*command, "--help"])
    assert result.exit_code == 0
    assert "--json" in result.stdout or "--registry" in result.stdout


# ---------------------------------------------------------------- preset


def test_preset_use_and_show_against_redis(redis_env: dict[str, str | None]) -> None:
    before = run(["preset", "show", "--json"], **redis_env)
    assert before.exit_code == 0, before.output
    assert json.loads(before.stdout)["active"]["version"] == 0

    used = run(["preset", "use", "local", "--reason", "drill", "--json"], **redis_env)
    assert used.exit_code == 0, used.output
    record = json.loads(used.stdout)
    assert (record["name"], record["version"], record["reason"]) == ("local", 1, "drill")
    assert record["changed_by"].startswith("tester@")

    keys = {"SAMBANOVA_API_KEY": "k", "NEBIUS_API_KEY": "k"}
    again = run(["preset", "use", "mixed-optimal"], **redis_env, **keys)
    assert again.exit_code == 0, again.output
    assert "active preset: mixed-optimal (version 2)" in again.stdout

    shown = run(["preset", "show", "--json"], **redis_env)
    data = json.loads(shown.stdout)
    assert data["active"]["name"] == "mixed-optimal"
    assert [h["version"] for h in data["history"]] == [2, 1]
    table = run(["preset", "show"], **redis_env)
    assert "active preset: mixed-optimal version 2" in table.stdout
    assert "drill" in table.stdout


def test_preset_use_refuses_unknown_and_uncredentialed(redis_env: dict[str, str | None]) -> None:
    unknown = run(["preset", "use", "fastest"], **redis_env)
    assert unknown.exit_code == 2
    assert "unknown preset 'fastest'" in unknown.stderr
    no_keys = run(["preset", "use", "nebius-balanced"], **redis_env)
    assert no_keys.exit_code == 2
    assert "NEBIUS_API_KEY is not set" in no_keys.stderr
    shown = json.loads(run(["preset", "show", "--json"], **redis_env).stdout)
    assert shown["active"]["version"] == 0
    forced = run(["preset", "use", "nebius-balanced", "--no-check-credentials"], **redis_env)
    assert forced.exit_code == 0, forced.output


def test_preset_commands_exit_3_when_redis_is_down() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    show = run(["preset", "show"], FLEET_REDIS_URL=url)
    assert show.exit_code == 3
    assert f"Redis at {url} did not answer" in show.stderr
    use = run(["preset", "use", "local"], FLEET_REDIS_URL=url)
    assert use.exit_code == 3
