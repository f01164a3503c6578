"""The model registry: providers, models, task profiles and presets, loaded from TOML.

Everything here is a frozen pydantic model with ``extra="forbid"``. :func:`load_registry`
reads a TOML file (by default the shipped ``fleet/data/registry.toml``), validates it as a
whole and raises :class:`~fleet.errors.RegistryError` listing **every** problem with its
location in the file (TOML path and line), e.g.
``presets.mixed-optimal.routes.gap_analysis.backups[1] (line 212): unknown model ...``.

File layout (see the shipped file for a full example)::

    default_preset = "local"
    [breaker]                 # BreakerPolicy defaults
    [providers.NAME]          # kind, base_url, api_key_env, timeouts, [providers.NAME.breaker]
    [[models]]                # name, provider, api_name, tier, prices, tokens_per_s, context
    [tasks.TASK_TYPE]         # tier, temperature, max_tokens, failure_policy, token_budget...
    [presets.NAME.routes]     # TASK_TYPE = { primary = "provider/model", backups = [...] }

Models are referenced everywhere by their key ``provider/name`` (``llama-8b`` exists on two
providers). Providers, tasks and presets are TOML tables keyed by name, so a duplicate there is
a TOML error (reported with its line); models are an array, and duplicates are checked.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from breaker_service.policy import BreakerPolicy
from fleet.errors import PresetError, RegistryError, UnknownTaskType

Tier = Literal["tiny", "small", "medium", "large"]
FailurePolicy = Literal["escalate", "retry_later", "degrade", "fail"]
ProviderKind = Literal["openai", "anthropic", "simulated"]

_FROZEN = ConfigDict(frozen=True, extra="forbid")


class ProviderInfo(BaseModel):
    """One API endpoint. ``kind="openai"`` means any OpenAI-compatible API.

    ``api_key_env`` names the environment variable holding the key (never the key itself); it
    may be ``None`` only for ``simulated`` providers. ``timeout_s`` is the total deadline of one
    request; ``breaker`` overrides :class:`BreakerPolicy` fields for this provider's scopes.
    """

    model_config = _FROZEN

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    kind: ProviderKind
    base_url: str = Field(pattern=r"^https?://\S+$")
    api_key_env: str | None = Field(None, validate_default=True)
    connect_timeout_s: float = Field(2.0, gt=0, le=60)
    timeout_s: float = Field(60.0, gt=0, le=3600)
    breaker: dict[str, Any] = Field(default_factory=dict)

    @field_validator("api_key_env")
    @classmethod
    def _key_env(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None and info.data.get("kind", "simulated") != "simulated":
            raise ValueError(
                "api_key_env is required for a real provider: name the environment variable "
                'that holds its API key, e.g. api_key_env = "SAMBANOVA_API_KEY"'
            )
        return value


class ModelInfo(BaseModel):
    """One model of one provider. ``name`` is short (``llama-70b``), unique per provider.

    Prices are USD per 1M tokens; ``tokens_per_s`` is the generation speed used for estimates.
    """

    model_config = _FROZEN

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.:-]+$")
    provider: str = Field(min_length=1)
    api_name: str = Field(min_length=1)
    tier: Tier
    input_cost_per_1m_usd: float = Field(ge=0)
    output_cost_per_1m_usd: float = Field(ge=0)
    tokens_per_s: float = Field(gt=0)
    context_window: int = Field(gt=0)
    breaker: dict[str, Any] = Field(default_factory=dict)

    @property
    def key(self) -> str:
        """Canonical name ``provider/name``, e.g. ``sambanova/llama-8b``."""
        return f"{self.provider}/{self.name}"

    def cost_usd(self, prompt_tokens: int, completion_tokens: int) -> float:
        """Price of one call: prompt tokens at the input price, completion at the output price."""
        cost = (
            Decimal(prompt_tokens) * Decimal(str(self.input_cost_per_1m_usd))
            + Decimal(completion_tokens) * Decimal(str(self.output_cost_per_1m_usd))
        ) / Decimal(1_000_000)
        return float(cost)


class TaskProfile(BaseModel):
    """How one task type is run: preferred tier, sampling, limits and local-failure policy.

    ``failure_policy`` says what a worker does when every model of the route failed:
    ``escalate`` (durable escalation queue), ``retry_later`` (up to
    ``retry_later_max_attempts``), ``degrade`` (answer ``fallback_output``, which is then
    required), ``fail``. ``token_budget`` caps the tokens one job may spend on this task.
    """

    model_config = _FROZEN

    task_type: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    tier: Tier
    temperature: float = Field(ge=0, le=2)
    max_tokens: int = Field(gt=0)
    description: str
    failure_policy: FailurePolicy = "escalate"
    token_budget: int = Field(gt=0)
    fallback_output: str | None = Field(None, validate_default=True)
    auto_replay: bool = False
    retry_later_max_attempts: int = Field(3, ge=1, le=100)

    @field_validator("fallback_output")
    @classmethod
    def _fallback(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None and info.data.get("failure_policy") == "degrade":
            raise ValueError(
                'failure_policy "degrade" needs fallback_output: set the text a job returns '
                "when every model failed, or choose another failure_policy"
            )
        return value


class RouteSpec(BaseModel):
    """Primary model key and the ordered backup chain of one task type in one preset."""

    model_config = _FROZEN

    primary: str
    backups: list[str] = Field(default_factory=list)


class Preset(BaseModel):
    """A named choice of route for every task type (switched fleet-wide, see fleet.presets)."""

    model_config = _FROZEN

    name: str
    description: str = ""
    routes: dict[str, RouteSpec]


class Registry(BaseModel):
    """A validated registry. Build it with :func:`load_registry`, never by hand.

    ``warnings`` lists non-fatal findings (e.g. a backup on its primary's provider).
    """

    model_config = _FROZEN

    breaker: BreakerPolicy
    providers: dict[str, ProviderInfo]
    models: dict[str, ModelInfo]
    tasks: dict[str, TaskProfile]
    presets: dict[str, Preset]
    default_preset: str
    source: str
    warnings: list[str] = Field(default_factory=list)

    def provider(self, name: str) -> ProviderInfo:
        """The provider ``name``; RegistryError naming the known providers otherwise."""
        try:
            return self.providers[name]
        except KeyError:
            known = ", ".join(sorted(self.providers))
            raise RegistryError(f"unknown provider {name!r}; known: {known}") from None

    def model(self, key: str) -> ModelInfo:
        """The model with key ``provider/name``; RegistryError naming the known keys otherwise."""
        try:
            return self.models[key]
        except KeyError:
            known = ", ".join(sorted(self.models))
            raise RegistryError(
                f"unknown model {key!r}; use provider/name, one of: {known}"
            ) from None

    def task(self, task_type: str) -> TaskProfile:
        """The profile of ``task_type``; UnknownTaskType naming the known types otherwise."""
        try:
            return self.tasks[task_type]
        except KeyError:
            known = ", ".join(sorted(self.tasks))
            raise UnknownTaskType(f"unknown task type {task_type!r}; known: {known}") from None

    def preset(self, name: str) -> Preset:
        """The preset ``name``; PresetError naming the known presets otherwise."""
        try:
            return self.presets[name]
        except KeyError:
            known = ", ".join(sorted(self.presets))
            raise PresetError(f"unknown preset {name!r}; known: {known}") from None

    def candidates(self, preset: str, task_type: str) -> list[ModelInfo]:
        """Models to try for ``task_type`` under ``preset``: primary, then backups in order."""
        self.task(task_type)
        spec = self.preset(preset).routes.get(task_type)
        if spec is None:
            raise PresetError(f"preset {preset!r} has no route for task type {task_type!r}")
        return [self.model(key) for key in (spec.primary, *spec.backups)]

    def policy_for(self, provider: str, model: str | None = None) -> BreakerPolicy:
        """Breaker policy of a scope: defaults <- provider override <- model override.

        ``model`` is a short name (``llama-8b``) or a key (``sambanova/llama-8b``).
        """
        policy = self.breaker.merged(self.provider(provider).breaker)
        if model is None:
            return policy
        key = model if "/" in model else f"{provider}/{model}"
        return policy.merged(self.model(key).breaker)

    def providers_of(self, preset: str) -> list[ProviderInfo]:
        """Providers that ``preset`` routes to (primaries and backups), in name order."""
        names = {
            self.model(key).provider
            for spec in self.preset(preset).routes.values()
            for key in (spec.primary, *spec.backups)
        }
        return [self.providers[n] for n in sorted(names)]

    def missing_credentials(self, preset: str, environ: Mapping[str, str]) -> list[str]:
        """One message per provider of ``preset`` whose API-key variable is unset or empty."""
        return [
            f"providers.{p.name}.api_key_env: environment variable {p.api_key_env} is not set; "
            f"export it (preset {preset!r} routes to {p.name})"
            for p in self.providers_of(preset)
            if p.api_key_env and not environ.get(p.api_key_env)
        ]


def load_registry(
    path: Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    active_preset: str | None = None,
) -> Registry:
    """Load and validate a registry file (default: the shipped ``fleet/data/registry.toml``).

    ``active_preset`` (default: the file's ``default_preset``) is the preset whose providers
    must have their API-key variables set in ``environ`` (default ``os.environ``).
    Raises :class:`~fleet.errors.RegistryError` listing every problem with its location.
    Warnings are logged and kept in :attr:`Registry.warnings`.
    """
    from fleet.registry_validate import build_registry  # noqa: PLC0415 - it imports this module

    return build_registry(path, environ=environ, active_preset=active_preset)


__all__ = [
    "FailurePolicy",
    "ModelInfo",
    "Preset",
    "ProviderInfo",
    "ProviderKind",
    "Registry",
    "RouteSpec",
    "TaskProfile",
    "Tier",
    "load_registry",
]
