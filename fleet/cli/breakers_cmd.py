"""``fleet breakers``: inspect the fleet-wide breakers, control them, and read their events.

Commands: ``list``, ``show SCOPE``, ``open|close|disable|reset SCOPE --reason TEXT`` and
``events [--follow]``. Scopes are written ``provider`` or ``provider/model``. Exit codes:
0 ok, 2 usage or configuration error, 3 Redis unavailable.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Annotated, Any

import redis
import typer
from rich.console import Console
from rich.table import Table

from breaker_service.control import BreakerControl
from breaker_service.errors import BreakerError, PolicyError, StoreUnavailable
from breaker_service.events import BreakerEvent, EventLog
from breaker_service.policy import BreakerPolicy
from breaker_service.scope import Scope
from breaker_service.store.base import BreakerStore, ControlAction, ScopeSnapshot
from breaker_service.store.redis import RedisStore
from fleet.cli._common import EXIT_CONFIG, EXIT_UNAVAILABLE, ActorOpt, JsonOpt
from fleet.errors import ConfigError
from fleet.redis_client import make_redis
from fleet.registry import Registry, load_registry
from fleet.settings import FleetSettings

ScopeArg = Annotated[str, typer.Argument(help="Breaker scope: 'provider' or 'provider/model'.")]
ReasonOpt = Annotated[
    str, typer.Option("--reason", help="Why (required; written to the audit stream).")
]


@dataclass
class _Env:
    settings: FleetSettings
    client: redis.Redis
    store: BreakerStore
    events: EventLog
    registry: Registry

    def policy_for(self, scope: Scope) -> BreakerPolicy:
        try:
            return self.registry.policy_for(scope.provider, scope.model)
        except ConfigError:
            return self.registry.breaker  # a scope the registry does not know: defaults

    def registry_scopes(self) -> list[Scope]:
        scopes = [Scope(name) for name in self.registry.providers]
        scopes += [Scope(m.provider, m.name) for m in self.registry.models.values()]
        return scopes


def _env() -> _Env:
    settings = FleetSettings.load()
    client = make_redis(settings)
    return _Env(
        settings=settings,
        client=client,
        store=RedisStore(client, namespace=settings.namespace),
        events=EventLog(client, namespace=settings.namespace, maxlen=settings.events_maxlen),
        registry=load_registry(settings.registry_path),
    )


@contextlib.contextmanager
def _exit_codes() -> Iterator[None]:
    """Turn configuration errors into exit 2 and an unreachable Redis into exit 3."""
    try:
        yield
    except (ConfigError, PolicyError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_CONFIG) from exc
    except (StoreUnavailable, redis.RedisError) as exc:
        typer.echo(
            f"error: Redis unavailable ({exc}); check FLEET_REDIS_URL and that Redis runs",
            err=True,
        )
        raise typer.Exit(EXIT_UNAVAILABLE) from exc
    except BreakerError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_CONFIG) from exc


def _row(snap: ScopeSnapshot) -> dict[str, Any]:
    data = asdict(snap)
    data["scope"] = str(snap.scope)
    data["open_for_s"] = (
        None if snap.open_until_ms is None else max(0.0, (snap.open_until_ms - snap.now_ms) / 1000)
    )
    return data


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, sort_keys=True))


def _open_text(row: dict[str, Any]) -> str:
    if row["state"] in ("forced_open",) or (row["state"] == "open" and row["open_for_s"] is None):
        return "until reset"
    return "-" if row["open_for_s"] is None else f"{row['open_for_s']:.1f}s"


def list_cmd(as_json: JsonOpt = False) -> None:
    """List every breaker: registry scopes plus any scope with state in Redis."""
    with _exit_codes():
        env = _env()
        scopes = sorted(set(env.registry_scopes()) | set(env.store.scopes()))
        rows = [_row(env.store.snapshot(s, env.policy_for(s))) for s in scopes]
    if as_json:
        _print_json(rows)
        return
    table = Table(box=None, pad_edge=False)
    for title in ("scope", "state", "fail rate", "calls", "open for", "trips"):
        table.add_column(title, no_wrap=True)
    for r in rows:
        table.add_row(
            r["scope"],
            r["state"],
            f"{r['failure_rate']:.0%}",
            str(r["calls"]),
            _open_text(r),
            str(r["trips"]),
        )
    Console(width=max(100, Console().width)).print(table)


def show_cmd(scope: ScopeArg, as_json: JsonOpt = False) -> None:
    """Show one breaker's state, window totals, probes and policy."""
    with _exit_codes():
        env = _env()
        parsed = Scope.parse(scope)
        policy = env.policy_for(parsed)
        row = _row(env.store.snapshot(parsed, policy))
    row["policy"] = policy.model_dump()
    if as_json:
        _print_json(row)
        return
    for key in sorted(row):
        if key != "policy":
            typer.echo(f"{key:22} {row[key]}")
    typer.echo("policy:")
    for key, value in row["policy"].items():
        typer.echo(f"  {key:20} {value}")


def _control(scope: str, action: ControlAction, reason: str, actor: str | None) -> None:
    with _exit_codes():
        env = _env()
        if not reason.strip():
            raise PolicyError("--reason must not be empty: say why (e.g. --reason 'incident 42')")
        control = BreakerControl(
            env.store, env.events, env.policy_for, worker_id=env.settings.worker_id
        )
        t = control.apply(Scope.parse(scope), action, reason=reason, actor=actor)
    typer.echo(f"{t.scope}: {t.from_state} -> {t.to_state} (generation {t.generation})")


def open_cmd(scope: ScopeArg, reason: ReasonOpt, actor: ActorOpt = None) -> None:
    """Force a breaker open (isolate the provider/model) until `close` or `reset`."""
    _control(scope, "force_open", reason, actor)


def close_cmd(scope: ScopeArg, reason: ReasonOpt, actor: ActorOpt = None) -> None:
    """Force a breaker closed: calls go through and are counted, it never trips."""
    _control(scope, "force_closed", reason, actor)


def disable_cmd(scope: ScopeArg, reason: ReasonOpt, actor: ActorOpt = None) -> None:
    """Disable a breaker: metrics only, it never rejects."""
    _control(scope, "disable", reason, actor)


def reset_cmd(scope: ScopeArg, reason: ReasonOpt, actor: ActorOpt = None) -> None:
    """Reset a breaker to closed with a fresh window and no trip history."""
    _control(scope, "reset", reason, actor)


def _event_line(event: BreakerEvent) -> str:
    who = f" actor={event.actor} reason={event.reason!r}" if event.actor else ""
    return (
        f"{event.id} {event.scope or '-'} {event.from_state} -> {event.to_state} "
        f"trigger={event.trigger} threshold={event.threshold:g} value={event.value:g} "
        f"generation={event.generation} worker={event.worker}{who}"
    )


def events_cmd(
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new events (Ctrl-C stops).")
    ] = False,
    count: Annotated[
        int, typer.Option("--count", "-n", min=0, help="How many recent events to print first.")
    ] = 20,
    as_json: JsonOpt = False,
) -> None:
    """Print recent breaker transitions and operator actions (the audit stream)."""
    show: Callable[[BreakerEvent], None] = (
        (lambda e: _print_json(e.as_dict())) if as_json else (lambda e: typer.echo(_event_line(e)))
    )
    with _exit_codes():
        env = _env()
        recent = env.events.recent(count) if count else []
        for event in recent:
            show(event)
        if not follow:
            return
        sys.stdout.flush()
        block_ms = max(10, int(env.settings.socket_timeout_s * 500))
        after = recent[-1].id if recent else env.events.last_id()
        with contextlib.suppress(KeyboardInterrupt):
            for event in env.events.follow(after=after, block_ms=block_ms):
                show(event)
                sys.stdout.flush()


def register(app: typer.Typer) -> None:
    """Add the ``breakers`` command group to ``app``."""
    group = typer.Typer(
        name="breakers",
        help="Inspect and control the fleet-wide circuit breakers (exit 3: Redis unavailable).",
        no_args_is_help=True,
    )
    group.command("list")(list_cmd)
    group.command("show")(show_cmd)
    group.command("open")(open_cmd)
    group.command("close")(close_cmd)
    group.command("disable")(disable_cmd)
    group.command("reset")(reset_cmd)
    group.command("events")(events_cmd)
    app.add_typer(group, name="breakers")
