"""``fleet escalations``: inspect, requeue, resolve and purge escalated jobs.

Commands: ``list``, ``show ID``, ``count``, ``requeue ID | --all | --matching``,
``resolve ID --note TEXT``, ``purge``. Filters: ``--reason``, ``--task-type``, ``--provider``,
``--older-than 10m`` (s, m, h, d; a bare number is seconds) and ``--status``. Exit codes:
0 ok, 1 no such entry (or it is not in a state the command accepts), 2 usage or
configuration error, 3 Redis unavailable.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Iterator
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Column, Table

from breaker_service.control import default_actor
from fleet.cli._common import EXIT_CONFIG, EXIT_FAILED, EXIT_UNAVAILABLE, ActorOpt, JsonOpt
from fleet.errors import (
    ConfigError,
    EscalationConflict,
    EscalationNotFound,
    FleetError,
    StateUnavailable,
)
from fleet.escalation import EscalationEntry, EscalationQueue, StatusFilter
from fleet.redis_client import make_redis
from fleet.settings import FleetSettings

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_STATUSES = ("open", "requeued", "resolved", "all")


def parse_duration(text: str | None) -> float | None:
    """``"90"``, ``"30s"``, ``"10m"``, ``"2h"``, ``"1d"`` -> seconds (None stays None)."""
    if text is None:
        return None
    match = _DURATION.match(text)
    if not match:
        raise typer.BadParameter(
            f"{text!r} is not a duration: write a number with s, m, h or d (e.g. 10m)"
        )
    return float(match.group(1)) * _UNIT_S[match.group(2) or "s"]


def _check_status(value: str) -> str:
    if value not in _STATUSES:
        raise typer.BadParameter(f"{value!r} is not a status: use {', '.join(_STATUSES)}")
    return value


IdArg = Annotated[str, typer.Argument(help="Entry id, as printed by `fleet escalations list`.")]
ReasonOpt = Annotated[str | None, typer.Option("--reason", help="Only entries with this reason.")]
TaskTypeOpt = Annotated[
    str | None, typer.Option("--task-type", help="Only entries of this task type.")
]
ProviderOpt = Annotated[
    str | None, typer.Option("--provider", help="Only entries that attempted this provider.")
]
OlderOpt = Annotated[
    str | None,
    typer.Option("--older-than", help="Only entries parked at least this long ago (e.g. 10m)."),
]
StatusOpt = Annotated[
    str,
    typer.Option("--status", callback=_check_status, help="open | requeued | resolved | all."),
]


@contextlib.contextmanager
def _exit_codes() -> Iterator[None]:
    """Exit 1 for a missing/conflicting entry, 2 for bad config or input, 3 without Redis."""
    try:
        yield
    except (EscalationNotFound, EscalationConflict) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_FAILED) from exc
    except StateUnavailable as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_UNAVAILABLE) from exc
    except (ConfigError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_CONFIG) from exc
    except FleetError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_FAILED) from exc


@contextlib.contextmanager
def _queue() -> Iterator[EscalationQueue]:
    settings = FleetSettings.load()
    client = make_redis(settings)
    try:
        yield EscalationQueue(settings, client)
    finally:
        client.close()


def _age(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _dump(entries: list[EscalationEntry]) -> str:
    return json.dumps([e.model_dump(mode="json") for e in entries], sort_keys=True)


def _entries_table(entries: list[EscalationEntry], title: str) -> Table:
    now = time.time()
    table = Table(
        Column("id", no_wrap=True, min_width=13), "age", "status", "task type", "reason",
        "policy", "providers", "replays", Column("job", overflow="fold"), title=title,
    )  # fmt: skip
    for e in entries:
        table.add_row(
            e.id, _age(e.age_s(now)), e.status, e.task_type, e.reason, e.policy,
            ",".join(e.providers), str(e.replay_count), e.job_id,
        )  # fmt: skip
    return table


def _details_table(entry: EscalationEntry) -> Table:
    created = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(entry.created_at))
    rows = [
        ("id", entry.id),
        ("job", entry.job_id),
        ("status", entry.status),
        ("task type", entry.task_type),
        ("reason", entry.reason),
        ("policy", entry.policy),
        ("queue", entry.queue),
        ("providers", ", ".join(entry.providers)),
        ("scopes", ", ".join(entry.scopes)),
        ("parked", f"{created} ({_age(entry.age_s(time.time()))} ago)"),
        ("replays", f"{entry.replay_count}" + (" (auto-replayed)" if entry.auto_replayed else "")),
        ("requeued by", entry.requeued_by or "-"),
        ("resolved by", entry.resolved_by or "-"),
        ("note", entry.note or "-"),
        ("previous entry", entry.previous_id or "-"),
    ]
    table = Table(Column("field", style="bold"), "value", title=f"escalation {entry.id}")
    for name, value in rows:
        table.add_row(name, value)
    return table


def _filters(
    reason: str | None, task_type: str | None, provider: str | None, older_than: str | None
) -> dict[str, Any]:
    return {
        "reason": reason,
        "task_type": task_type,
        "provider": provider,
        "older_than_s": parse_duration(older_than),
    }


def list_cmd(
    *,
    reason: ReasonOpt = None,
    task_type: TaskTypeOpt = None,
    provider: ProviderOpt = None,
    older_than: OlderOpt = None,
    status: StatusOpt = "open",
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many.")] = 100,
    as_json: JsonOpt = False,
) -> None:
    """List escalated jobs, oldest first (default: the open ones)."""
    filters = _filters(reason, task_type, provider, older_than)
    with _exit_codes(), _queue() as queue:
        st: StatusFilter = status  # type: ignore[assignment]  # checked by _check_status
        entries = queue.list(status=st, limit=limit, **filters)
    if as_json:
        typer.echo(_dump(entries))
        return
    Console().print(_entries_table(entries, f"escalations ({status}): {len(entries)}"))


def show_cmd(entry_id: IdArg, as_json: JsonOpt = False) -> None:
    """Show one entry with its full attempt history."""
    with _exit_codes(), _queue() as queue:
        entry = queue.get(entry_id)
    if as_json:
        typer.echo(entry.model_dump_json())
        return
    console = Console()
    console.print(_details_table(entry))
    attempts = Table(
        "#", Column("model", no_wrap=True), "provider", "outcome", "status", "breaker",
        "latency ms", "retry after", Column("detail", overflow="fold"),
        title=f"attempts ({len(entry.attempts)})",
    )  # fmt: skip
    for i, a in enumerate(entry.attempts, 1):
        attempts.add_row(
            str(i), a.model, a.provider, a.outcome, "-" if a.status is None else str(a.status),
            a.breaker, f"{a.latency_ms:.0f}",
            "-" if a.retry_after_s is None else f"{a.retry_after_s:.1f}s", a.detail,
        )  # fmt: skip
    console.print(attempts)


def count_cmd(
    *,
    reason: ReasonOpt = None,
    task_type: TaskTypeOpt = None,
    provider: ProviderOpt = None,
    older_than: OlderOpt = None,
    status: StatusOpt = "open",
    as_json: JsonOpt = False,
) -> None:
    """Count escalated jobs matching the filters (default: open ones)."""
    filters = _filters(reason, task_type, provider, older_than)
    with _exit_codes(), _queue() as queue:
        st: StatusFilter = status  # type: ignore[assignment]  # checked by _check_status
        n = queue.count(status=st, **filters)
    if as_json:
        typer.echo(json.dumps({"count": n, "status": status, **filters}, sort_keys=True))
        return
    typer.echo(str(n))


def requeue_cmd(
    entry_id: Annotated[str | None, typer.Argument(help="Entry id to requeue.")] = None,
    *,
    all_open: Annotated[bool, typer.Option("--all", help="Requeue every open entry.")] = False,
    matching: Annotated[
        bool, typer.Option("--matching", help="Requeue open entries matching the filters.")
    ] = False,
    reason: ReasonOpt = None,
    task_type: TaskTypeOpt = None,
    provider: ProviderOpt = None,
    older_than: OlderOpt = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="With an ID: requeue an entry already marked requeued once more."
        ),
    ] = False,
    actor: ActorOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Send open entries' jobs back to their original queue with a fresh attempt budget."""
    filters = _filters(reason, task_type, provider, older_than)
    has_filters = any(v is not None for v in filters.values())
    if (entry_id is not None) + all_open + matching != 1:
        raise typer.BadParameter("give exactly one of: an entry ID, --all, or --matching")
    if matching and not has_filters:
        raise typer.BadParameter("--matching needs a filter (--reason, --task-type, ...); or --all")
    if has_filters and not matching:
        raise typer.BadParameter("filters only apply with --matching")
    if force and entry_id is None:
        raise typer.BadParameter("--force only applies to one entry ID")
    who = actor or default_actor()
    with _exit_codes(), _queue() as queue:
        if entry_id is not None:
            done = [queue.requeue(entry_id, actor=who, force=force)]
        else:
            done = queue.requeue_matching(actor=who, **filters)
    if as_json:
        typer.echo(_dump(done))
        return
    Console().print(_entries_table(done, f"requeued: {len(done)}"))


def resolve_cmd(
    entry_id: IdArg,
    note: Annotated[str, typer.Option("--note", help="What was done (required).")],
    actor: ActorOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Mark an entry handled by a person, with a note."""
    with _exit_codes(), _queue() as queue:
        entry = queue.resolve(entry_id, note=note, actor=actor or default_actor())
    if as_json:
        typer.echo(entry.model_dump_json())
        return
    typer.echo(f"resolved {entry.id} (job {entry.job_id}) by {entry.resolved_by}: {entry.note}")


def purge_cmd(
    older_than: Annotated[
        str | None,
        typer.Option("--older-than", help="Only entries resolved at least this long ago."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Delete resolved entries (default: all of them) and their indexes."""
    older_than_s = parse_duration(older_than) or 0.0
    with _exit_codes(), _queue() as queue:
        n = queue.purge_resolved(older_than_s=older_than_s)
    if as_json:
        typer.echo(json.dumps({"purged": n, "older_than_s": older_than_s}))
        return
    typer.echo(f"purged {n} resolved entries")


def register(app: typer.Typer) -> None:
    """Add the ``escalations`` command group to ``app``."""
    group = typer.Typer(
        name="escalations",
        help="The escalation queue: jobs whose primary and backups all failed.",
        no_args_is_help=True,
    )
    group.command("list")(list_cmd)
    group.command("show")(show_cmd)
    group.command("count")(count_cmd)
    group.command("requeue")(requeue_cmd)
    group.command("resolve")(resolve_cmd)
    group.command("purge")(purge_cmd)
    app.add_typer(group)
