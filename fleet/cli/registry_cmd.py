"""``fleet registry show|validate|estimate`` and ``fleet preset use|show``.

Tables (rich) for people, ``--json`` for scripts. Exit codes: 0 ok; 1 the check found
problems (``registry validate``); 2 configuration or usage error (invalid settings, registry,
preset or flag); 3 Redis did not answer (``preset`` commands).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from breaker_service.control import default_actor
from fleet.cli._common import EXIT_CONFIG, EXIT_FAILED, EXIT_UNAVAILABLE, JsonOpt
from fleet.cost import Estimate, estimate
from fleet.errors import ConfigError, StateUnavailable
from fleet.presets import ActivePreset, PresetStore
from fleet.redis_client import make_redis
from fleet.registry import Registry, load_registry
from fleet.settings import FleetSettings

RegistryOpt = Annotated[
    Path | None,
    typer.Option(
        "--registry",
        help="Registry TOML file (default: $FLEET_REGISTRY_PATH, else the shipped registry).",
        dir_okay=False,
    ),
]


def _fail(code: int, message: str) -> NoReturn:
    typer.echo(message, err=True)
    raise typer.Exit(code)


def _settings() -> FleetSettings:
    try:
        return FleetSettings.load()
    except ConfigError as exc:
        _fail(EXIT_CONFIG, f"error: {exc}")


def _registry(path: Path | None, settings: FleetSettings, active: str | None = None) -> Registry:
    try:
        return load_registry(path or settings.registry_path, active_preset=active)
    except ConfigError as exc:
        _fail(EXIT_CONFIG, f"error: {exc}")


@contextmanager
def _store(settings: FleetSettings, registry: Registry) -> Iterator[PresetStore]:
    conn = make_redis(settings)
    try:
        yield PresetStore(settings, conn, registry)
    except StateUnavailable as exc:
        _fail(EXIT_UNAVAILABLE, f"error: Redis at {settings.redis_url} did not answer: {exc}")
    except ConfigError as exc:
        _fail(EXIT_CONFIG, f"error: {exc}")
    finally:
        conn.close()


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=False))


def _table(title: str, *columns: str) -> Table:
    table = Table(title=title)
    for column in columns:
        right = column.startswith(("$", "tok", "ctx"))
        table.add_column(column, justify="right" if right else "left", overflow="fold")
    return table


def _providers_table(registry: Registry) -> Table:
    table = _table("providers", "name", "kind", "base_url", "api_key_env", "timeout_s")
    for p in registry.providers.values():
        table.add_row(p.name, p.kind, p.base_url, p.api_key_env or "-", f"{p.timeout_s:g}")
    return table


def _models_table(registry: Registry) -> Table:
    table = _table("models", "key", "api_name", "tier", "$in/1M", "$out/1M", "tok/s", "ctx")
    for m in registry.models.values():
        table.add_row(
            m.key, m.api_name, m.tier, f"{m.input_cost_per_1m_usd:g}",
            f"{m.output_cost_per_1m_usd:g}", f"{m.tokens_per_s:g}", str(m.context_window),
        )  # fmt: skip
    return table


def _tasks_table(registry: Registry) -> Table:
    table = _table("tasks", "task_type", "tier", "temp", "max_tokens", "budget", "on failure")
    for t in registry.tasks.values():
        policy = t.failure_policy + (f" ({t.fallback_output!r})" if t.fallback_output else "")
        table.add_row(
            t.task_type, t.tier, f"{t.temperature:g}", str(t.max_tokens), str(t.token_budget),
            policy,
        )  # fmt: skip
    return table


def _presets_table(registry: Registry) -> Table:
    table = _table("presets", "preset", "task_type", "primary", "backups")
    for preset in registry.presets.values():
        name = preset.name + (" (default)" if preset.name == registry.default_preset else "")
        for task_type, spec in preset.routes.items():
            table.add_row(name, task_type, spec.primary, ", ".join(spec.backups))
            name = ""
        table.add_section()
    return table


def _estimate_table(result: Estimate) -> Table:
    table = _table(f"cost of one job, preset {result.preset}", "task_type", "model", "tokens",
                   "$/1M", "$ cost")  # fmt: skip
    for line in result.tasks:
        table.add_row(
            line.task_type, line.model, f"{line.tokens:,}", f"{line.price_per_1m_usd:g}",
            f"{line.cost_usd:.6f}",
        )  # fmt: skip
    table.add_section()
    table.add_row("total", "", f"{result.total_tokens:,}", "", f"{result.total_usd:.6f}")
    return table


def parse_tokens(items: list[str]) -> dict[str, int]:
    """``["gap_analysis=200k", "recommendations=500000"]`` -> counts (k and m suffixes allowed)."""
    counts: dict[str, int] = {}
    for item in items:
        task, sep, raw = item.partition("=")
        number = raw.strip().lower()
        scale = {"k": 1_000, "m": 1_000_000}.get(number[-1:], 1)
        digits = number[:-1] if scale > 1 else number
        if not sep or not task.strip() or not digits.isdigit():
            raise typer.BadParameter(
                f"{item!r}: expected TASK=N, e.g. gap_analysis=200000 or gap_analysis=200k",
                param_hint="--tokens",
            )
        counts[task.strip()] = int(digits) * scale
    return counts


def _show(registry_path: RegistryOpt = None, as_json: JsonOpt = False) -> None:
    """Show providers, models, task profiles and presets of the registry."""
    registry = _registry(registry_path, _settings())
    if as_json:
        data = registry.model_dump(mode="json")
        data["models"] = {k: {**v, "key": k} for k, v in data["models"].items()}
        _print_json(data)
        return
    console = Console()
    console.print(f"registry: {registry.source}  default preset: {registry.default_preset}")
    for table in (
        _providers_table(registry),
        _models_table(registry),
        _tasks_table(registry),
        _presets_table(registry),
    ):
        console.print(table)
    for warning in registry.warnings:
        console.print(f"[yellow]warning:[/] {warning}")


def _validate(
    registry_path: RegistryOpt = None,
    preset: Annotated[
        str | None,
        typer.Option(help="Check API-key variables for this preset (default: default_preset)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Validate the registry; list every problem with its file location (exit 1 if any)."""
    settings = _settings()
    try:
        registry = load_registry(registry_path or settings.registry_path, active_preset=preset)
    except ConfigError as exc:
        if as_json:
            _print_json({"ok": False, "error": str(exc).splitlines()[0], "problems": exc.problems})
            raise typer.Exit(EXIT_FAILED) from None
        _fail(EXIT_FAILED, f"invalid: {exc}")
    summary = {
        "ok": True,
        "source": registry.source,
        "providers": len(registry.providers),
        "models": len(registry.models),
        "tasks": len(registry.tasks),
        "presets": len(registry.presets),
        "warnings": registry.warnings,
    }
    if as_json:
        _print_json(summary)
        return
    typer.echo(
        f"ok: {registry.source}: {summary['providers']} providers, {summary['models']} models, "
        f"{summary['tasks']} task types, {summary['presets']} presets"
    )
    for warning in registry.warnings:
        typer.echo(f"warning: {warning}")


def _estimate(
    preset: Annotated[str, typer.Option(help="Preset whose primary models are priced.")],
    tokens: Annotated[
        list[str] | None,
        typer.Option(
            help="TASK=N total tokens of one job (repeatable; k/m suffixes). "
            "Default: every task at its token_budget."
        ),
    ] = None,
    completion_share: Annotated[
        float, typer.Option(help="Fraction of tokens that are output (blends the two prices).")
    ] = 0.5,
    registry_path: RegistryOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Estimate the cost of one job under a preset, per task type and in total."""
    counts = parse_tokens(tokens) if tokens else None
    registry = _registry(registry_path, _settings())
    try:
        result = estimate(registry, preset, counts, completion_share=completion_share)
    except ConfigError as exc:
        _fail(EXIT_CONFIG, f"error: {exc}")
    if as_json:
        _print_json(result.model_dump(mode="json"))
        return
    Console().print(_estimate_table(result))


def _record(active: ActivePreset) -> dict[str, Any]:
    return active.model_dump(mode="json")


def _use(
    name: Annotated[str, typer.Argument(help="Preset to route the whole fleet on.")],
    reason: Annotated[str, typer.Option(help="Why (kept in the audit history).")] = "",
    check_credentials: Annotated[
        bool,
        typer.Option(
            help="Refuse when this shell lacks the preset's API-key variables "
            "(--no-check-credentials when only the workers hold the keys)."
        ),
    ] = True,
    registry_path: RegistryOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Switch the fleet-wide active preset; every process follows within FLEET_PRESET_CACHE_S."""
    settings = _settings()
    registry = _registry(registry_path, settings)
    with _store(settings, registry) as store:
        record = store.use(
            name, actor=default_actor(), reason=reason, check_credentials=check_credentials
        )
    if as_json:
        _print_json(_record(record))
        return
    typer.echo(
        f"active preset: {record.name} (version {record.version}) by {record.changed_by}; "
        f"workers follow within {settings.preset_cache_s:g}s"
    )


def _show_preset(
    limit: Annotated[int, typer.Option(min=1, help="History entries to show.")] = 10,
    registry_path: RegistryOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show the active preset, its version and the switch history (newest first)."""
    settings = _settings()
    registry = _registry(registry_path, settings)
    with _store(settings, registry) as store:
        active = store.active()
        history = store.history(limit)
    if as_json:
        _print_json({"active": _record(active), "history": [_record(h) for h in history]})
        return
    console = Console()
    console.print(
        f"active preset: [bold]{active.name}[/] version {active.version} (by {active.changed_by})"
    )
    table = Table(title="preset history (newest first)")
    for column in ("version", "preset", "changed_at (UTC)", "by", "reason"):
        table.add_column(column)
    for h in history:
        when = datetime.fromtimestamp(h.changed_at, UTC).strftime("%Y-%m-%d %H:%M:%S")
        table.add_row(str(h.version), h.name, when, h.changed_by, h.reason)
    console.print(table)


def register(app: typer.Typer) -> None:
    """Add the ``registry`` and ``preset`` command groups to ``app``."""
    registry_app = typer.Typer(
        help="Inspect, validate and price the model registry.", no_args_is_help=True
    )
    registry_app.command("show")(_show)
    registry_app.command("validate")(_validate)
    registry_app.command("estimate")(_estimate)
    preset_app = typer.Typer(
        help="Show or switch the fleet-wide active preset (kept in Redis).", no_args_is_help=True
    )
    preset_app.command("use")(_use)
    preset_app.command("show")(_show_preset)
    app.add_typer(registry_app, name="registry")
    app.add_typer(preset_app, name="preset")
