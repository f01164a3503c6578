"""Typed settings for every agent-fleet process, read from ``FLEET_*`` environment variables.

``FleetSettings.load()`` is the one entry point: it reads the environment (and keyword
overrides), and turns any invalid value into a :class:`~fleet.errors.ConfigError` that names
the environment variable and says how to fix it.
"""

from __future__ import annotations

import difflib
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from fleet.errors import ConfigError

ENV_PREFIX = "FLEET_"
FallbackMode = Literal["local", "fail_open", "fail_closed"]


def default_worker_id() -> str:
    """``hostname:pid``: names the process that caused a breaker transition or ran a job."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _check_redis_url(value: str) -> str:
    if not value.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(
            f"{value!r} is not a Redis URL; "
            "use redis://HOST:PORT/DB (e.g. redis://127.0.0.1:6379/0)"
        )
    return value


class FleetSettings(BaseSettings):
    """Settings shared by apps, workers, the CLI and the breaker.

    Every field reads ``FLEET_<FIELD>`` (upper case), e.g. ``FLEET_REDIS_URL``.
    Units are in the names: ``_s`` seconds, ``_ms`` milliseconds.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", frozen=True, validate_default=True
    )

    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="Redis for breaker state, job records, presets and escalations.",
    )
    broker_url: str | None = Field(
        None, description="Celery broker URL; defaults to redis_url (same server)."
    )
    namespace: str = Field(
        "fleet",
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="Prefix of every Redis key and stream (letters, digits, _ . -).",
    )
    registry_path: Path | None = Field(
        None, description="TOML model registry; defaults to the shipped fleet/data/registry.toml."
    )
    socket_timeout_s: float = Field(
        0.25, gt=0, le=30, description="Redis read/write timeout for breaker and state calls."
    )
    socket_connect_timeout_s: float = Field(0.25, gt=0, le=30, description="Redis connect timeout.")
    breaker_fallback: FallbackMode = Field(
        "local",
        description="Breaker mode when Redis is unreachable: local | fail_open | fail_closed.",
    )
    events_maxlen: int = Field(
        10_000, ge=100, description="Approximate MAXLEN of the breaker/audit event stream."
    )
    preset_cache_s: float = Field(
        1.0,
        ge=0,
        le=60,
        description="Seconds a process routes on a cached preset before re-checking it.",
    )
    sentry_dsn: str | None = Field(None, description="Sentry DSN; Sentry is off when unset.")
    worker_id: str = Field(default_factory=default_worker_id)
    visibility_timeout_s: int = Field(
        3600, ge=60, description="Redis broker visibility timeout; larger than any job + countdown."
    )
    job_soft_time_limit_s: int = Field(600, ge=1, description="Celery soft time limit per job.")
    job_time_limit_s: int = Field(660, ge=1, description="Celery hard time limit per job.")
    agent_modules: str = Field(
        "workers.agents",
        description="Comma-separated modules whose @agent functions workers and submit() load.",
    )
    max_redeliveries: int = Field(
        3, ge=0, le=100, description="Deliveries of one job before it is escalated, not retried."
    )
    sweep_interval_s: float = Field(
        30.0,
        ge=0,
        le=3600,
        description="Seconds between job sweeps in each worker (0 turns the sweeper off).",
    )
    sweep_grace_s: float = Field(
        60.0,
        ge=1,
        le=86_400,
        description=(
            "A queued job untouched this long whose message the broker no longer holds, or a "
            "running job untouched this long past the hard time limit, is re-dispatched."
        ),
    )

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        return _check_redis_url(value)

    @field_validator("broker_url")
    @classmethod
    def _broker_url(cls, value: str | None) -> str | None:
        return None if value is None else _check_redis_url(value)

    @model_validator(mode="after")
    def _limits(self) -> FleetSettings:
        if not self.job_soft_time_limit_s < self.job_time_limit_s < self.visibility_timeout_s:
            raise ValueError(
                "need job_soft_time_limit_s < job_time_limit_s < visibility_timeout_s "
                f"(got {self.job_soft_time_limit_s} < {self.job_time_limit_s} < "
                f"{self.visibility_timeout_s}); "
                "raise FLEET_VISIBILITY_TIMEOUT_S or lower the limits"
            )
        return self

    @property
    def effective_broker_url(self) -> str:
        """The Celery broker URL: ``broker_url`` or, when unset, ``redis_url``."""
        return self.broker_url or self.redis_url

    def key(self, *parts: str) -> str:
        """A Redis key in this namespace: ``key("jobs", id)`` -> ``fleet:jobs:<id>``."""
        return ":".join((self.namespace, *parts))

    @classmethod
    def load(cls, **overrides: Any) -> FleetSettings:
        """Read settings from the environment plus ``overrides``.

        Raises :class:`ConfigError` naming each invalid ``FLEET_*`` variable and the fix,
        including ``FLEET_*`` variables that name no setting (a typo would otherwise be
        dropped silently and the default used).
        """
        problems = unknown_env_vars(os.environ)
        try:
            settings = cls(**overrides)
        except ValidationError as exc:
            for err in exc.errors():
                loc = [str(p) for p in err["loc"]]
                var = ENV_PREFIX + loc[0].upper() if loc else "FLEET_* (settings)"
                problems.append(f"{var}: {err['msg']}")
            raise ConfigError("invalid agent-fleet settings", problems) from exc
        if problems:
            raise ConfigError("invalid agent-fleet settings", problems)
        return settings


# FLEET_* variables read by tooling rather than by FleetSettings.
TOOLING_ENV_VARS = frozenset({"FLEET_REDIS_IMAGE", "FLEET_SIM_IMAGE", "FLEET_REQUIRE_DOCKER"})
TOOLING_ENV_PREFIXES = ("FLEET_TEST_",)


def unknown_env_vars(environ: Mapping[str, str]) -> list[str]:
    """Problems for ``FLEET_*`` variables that match no setting, with the closest name."""
    fields = {ENV_PREFIX + name.upper() for name in FleetSettings.model_fields}
    problems = []
    for var in sorted(environ):
        if (
            not var.startswith(ENV_PREFIX)
            or var in fields
            or var in TOOLING_ENV_VARS
            or var.startswith(TOOLING_ENV_PREFIXES)
        ):
            continue
        close = difflib.get_close_matches(var, sorted(fields), n=1)
        hint = f"did you mean {close[0]}?" if close else "unset it"
        problems.append(f"{var}: no such setting; {hint} (settings: fleet/settings.py)")
    return problems
