"""FleetSettings: environment variables, defaults, and errors that name the FLEET_* variable."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fleet.errors import ConfigError
from fleet.settings import FleetSettings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("FLEET_"):
            monkeypatch.delenv(name)


def test_defaults_are_loopback_and_the_fleet_namespace() -> None:
    settings = FleetSettings.load()
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.effective_broker_url == settings.redis_url
    assert settings.key("preset", "active") == "fleet:preset:active"
    assert settings.registry_path is None
    assert settings.preset_cache_s == 1.0


def test_environment_variables_are_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FLEET_REDIS_URL", "redis://127.0.0.1:7000/2")
    monkeypatch.setenv("FLEET_BROKER_URL", "redis://127.0.0.1:7001/0")
    monkeypatch.setenv("FLEET_NAMESPACE", "prod-eu")
    monkeypatch.setenv("FLEET_REGISTRY_PATH", str(tmp_path / "r.toml"))
    monkeypatch.setenv("FLEET_PRESET_CACHE_S", "0.5")
    settings = FleetSettings.load()
    assert settings.redis_url.endswith(":7000/2")
    assert settings.effective_broker_url.endswith(":7001/0")
    assert settings.key("x") == "prod-eu:x"
    assert settings.registry_path == tmp_path / "r.toml"
    assert settings.preset_cache_s == 0.5


def test_settings_are_frozen() -> None:
    settings = FleetSettings.load()
    with pytest.raises(ValueError, match="frozen"):
        settings.namespace = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("variable", "value", "hint"),
    [
        ("FLEET_REDIS_URL", "http://127.0.0.1:6379", "is not a Redis URL"),
        ("FLEET_BROKER_URL", "amqp://127.0.0.1", "is not a Redis URL"),
        ("FLEET_NAMESPACE", "has spaces", "should match pattern"),
        ("FLEET_SOCKET_TIMEOUT_S", "0", "greater than 0"),
        ("FLEET_PRESET_CACHE_S", "soon", "valid number"),
        ("FLEET_BREAKER_FALLBACK", "pray", "'local', 'fail_open' or 'fail_closed'"),
        ("FLEET_EVENTS_MAXLEN", "10", "greater than or equal to 100"),
    ],
)
def test_invalid_variable_is_named_with_the_fix(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, hint: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as info:
        FleetSettings.load()
    (problem,) = info.value.problems
    assert problem.startswith(f"{variable}: ")
    assert hint in problem
    assert variable in str(info.value)


def test_every_invalid_variable_is_listed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET_REDIS_URL", "localhost")
    monkeypatch.setenv("FLEET_SOCKET_CONNECT_TIMEOUT_S", "-1")
    with pytest.raises(ConfigError) as info:
        FleetSettings.load()
    names = sorted(p.split(":")[0] for p in info.value.problems)
    assert names == ["FLEET_REDIS_URL", "FLEET_SOCKET_CONNECT_TIMEOUT_S"]


def test_time_limits_must_nest_and_the_message_names_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FLEET_JOB_TIME_LIMIT_S", "4000")
    with pytest.raises(ConfigError) as info:
        FleetSettings.load()
    assert "FLEET_VISIBILITY_TIMEOUT_S" in str(info.value)


def test_unknown_override_is_refused_not_dropped() -> None:
    with pytest.raises(ConfigError, match="FLEET_REDIS_ULR"):
        FleetSettings.load(redis_ulr="redis://127.0.0.1:6379/0")


def test_a_misspelt_fleet_variable_is_refused_with_the_closest_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FLEET_REDIS_ULR", "redis://127.0.0.1:1/0")
    with pytest.raises(ConfigError) as info:
        FleetSettings.load()
    assert info.value.problems == [
        "FLEET_REDIS_ULR: no such setting; did you mean FLEET_REDIS_URL? "
        "(settings: fleet/settings.py)"
    ]


def test_tooling_variables_are_not_settings_typos(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET_REDIS_IMAGE", "local/redis:7")
    monkeypatch.setenv("FLEET_REQUIRE_DOCKER", "1")
    assert FleetSettings.load().namespace == "fleet"
