"""``fleet submit``, ``fleet jobs show|list|cancel|sweep`` and ``fleet worker``.

Exit codes: 0 ok; 1 a waited-for job did not succeed; 2 refused at submit or bad settings;
3 Redis did not answer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fleet.cli._common import EXIT_CONFIG, EXIT_FAILED, EXIT_UNAVAILABLE
from fleet.errors import ConfigError, JobNotFound, StateUnavailable, SubmitError
from fleet.jobs import JobClient, JobHandle
from fleet.jobstore import STATES, TERMINAL_STATES, JobRecord
from fleet.settings import FleetSettings

console = Console()
err_console = Console(stderr=True)


def _fail(message: str, code: int) -> typer.Exit:
    err_console.print(f"[red]{message}[/red]")
    return typer.Exit(code)


def _client() -> JobClient:
    try:
        return JobClient(FleetSettings.load())
    except ConfigError as exc:
        raise _fail(str(exc), EXIT_CONFIG) from exc


def _parse_payload(text: str) -> dict[str, Any]:
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _fail(f"--json-payload: not valid JSON ({exc})", EXIT_CONFIG) from exc
    if not isinstance(payload, dict):
        raise _fail('--json-payload: must be a JSON object, e.g. \'{"topic": "x"}\'', EXIT_CONFIG)
    return payload


def _wait_all(handles: list[JobHandle], timeout_s: float) -> list[JobRecord]:
    deadline = time.monotonic() + timeout_s
    done: dict[str, JobRecord] = {}
    columns = (TextColumn("jobs"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err_console, transient=len(handles) == 1) as bar:
        task = bar.add_task("jobs", total=len(handles))
        while len(done) < len(handles):
            for h in handles:
                if h.job_id not in done:
                    record = h.status()
                    if record.terminal:
                        done[h.job_id] = record
            bar.update(task, completed=len(done))
            if len(done) < len(handles):
                if time.monotonic() >= deadline:
                    raise _fail(
                        f"timed out after {timeout_s}s: {len(done)}/{len(handles)} jobs done",
                        EXIT_FAILED,
                    )
                time.sleep(0.2)
    return [done[h.job_id] for h in handles]


def submit_cmd(
    agent: Annotated[str, typer.Argument(help="Agent name, e.g. research.research.")],
    *,
    json_payload: Annotated[str, typer.Option("--json-payload", help="Payload JSON object.")],
    wait: Annotated[bool, typer.Option("--wait", help="Wait until every job ends.")] = False,
    repeat: Annotated[int, typer.Option(min=1, max=100_000, help="Submit N copies.")] = 1,
    session_id: Annotated[str | None, typer.Option(help="Session id for budgets.")] = None,
    workflow_id: Annotated[str | None, typer.Option(help="Workflow id to group jobs.")] = None,
    priority: Annotated[int, typer.Option(min=0, max=9, help="0 first .. 9 last.")] = 0,
    timeout_s: Annotated[float, typer.Option(help="--wait gives up after this long.")] = 300.0,
) -> None:
    """Validate and queue jobs for AGENT; prints one job id per line.

    Refused submits (unknown agent, bad payload...) exit 2 with the field to fix; with --wait,
    exits 1 unless every job succeeded.
    """
    payload = _parse_payload(json_payload)
    try:
        with _client() as client:
            handles = [
                client.submit(
                    agent,
                    payload,
                    session_id=session_id,
                    workflow_id=workflow_id,
                    priority=priority,
                )
                for _ in range(repeat)
            ]
            for h in handles:
                typer.echo(h.job_id)
            if not wait:
                return
            records = _wait_all(handles, timeout_s)
    except SubmitError as exc:
        raise _fail(f"refused: {exc}", EXIT_CONFIG) from exc
    except StateUnavailable as exc:
        raise _fail(str(exc), EXIT_UNAVAILABLE) from exc
    by_state: dict[str, int] = {}
    for r in records:
        by_state[r.state] = by_state.get(r.state, 0) + 1
    err_console.print(" ".join(f"{s}={n}" for s, n in sorted(by_state.items())))
    if set(by_state) != {"succeeded"}:
        raise typer.Exit(EXIT_FAILED)


def show_cmd(
    job_id: Annotated[str, typer.Argument(help="Job id (as printed by fleet submit).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the record as JSON.")] = False,
) -> None:
    """Show one job: state, attempts, cost, result or error, policy and attempt history."""
    try:
        with _client() as client:
            record = client.store.get(job_id)
    except JobNotFound as exc:
        raise _fail(str(exc), EXIT_FAILED) from exc
    except StateUnavailable as exc:
        raise _fail(str(exc), EXIT_UNAVAILABLE) from exc
    if as_json:
        typer.echo(record.model_dump_json(indent=2))
        return
    table = Table(show_header=False)
    for name in (
        "job_id", "state", "agent", "task_type", "workflow_id", "deliveries", "dispatch",
        "redispatches", "worker",
    ):  # fmt: skip
        table.add_row(name, str(getattr(record, name)))
    table.add_row("cost_usd", f"{record.cost_usd:.6f}")
    table.add_row("policy", f"{record.policy or '-'} ({record.policy_reason or '-'})")
    table.add_row("degraded", str(record.degraded))
    table.add_row(
        "result" if record.state == "succeeded" else "error", str(record.result or record.error)
    )
    for i, a in enumerate(record.history):
        table.add_row(f"attempt {i}", f"{a.model}@{a.provider} {a.outcome} {a.breaker} {a.detail}")
    console.print(table)


def list_cmd(
    state: Annotated[
        str | None, typer.Option(help=f"Only this state: {', '.join(STATES)}.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="At most this many.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
) -> None:
    """List recent jobs (most recently changed first) and the conservation counters."""
    if state is not None and state not in STATES:
        raise _fail(f"--state: {state!r} is not a job state; use one of {', '.join(STATES)}", 2)
    try:
        with _client() as client:
            records = client.store.list(state, limit=limit)
            counts = client.store.counts()
    except StateUnavailable as exc:
        raise _fail(str(exc), EXIT_UNAVAILABLE) from exc
    if as_json:
        for r in records:
            typer.echo(r.model_dump_json())
        return
    table = Table("job_id", "state", "agent", "task_type", "deliveries", "cost_usd", "policy")
    for r in records:
        table.add_row(
            r.job_id,
            r.state,
            r.agent,
            r.task_type,
            str(r.deliveries),
            f"{r.cost_usd:.6f}",
            r.policy or "",
        )
    console.print(table)
    settled = sum(counts[s] for s in TERMINAL_STATES)
    err_console.print(
        " ".join(f"{k}={v}" for k, v in counts.items())
        + f" in_flight={counts['submitted'] - settled}"
    )


def cancel_cmd(
    job_id: Annotated[str, typer.Argument(help="Job id to cancel (must still be queued).")],
) -> None:
    """Cancel a queued job: its message is acked without running. Exits 1 if it already
    runs or ended."""
    try:
        with _client() as client:
            cancelled = client.cancel(job_id)
            state = client.store.state(job_id)
    except JobNotFound as exc:
        raise _fail(str(exc), EXIT_FAILED) from exc
    except StateUnavailable as exc:
        raise _fail(str(exc), EXIT_UNAVAILABLE) from exc
    if not cancelled:
        raise _fail(f"job {job_id} is {state}; only queued jobs can be cancelled", EXIT_FAILED)
    typer.echo(f"{job_id} cancelled")


def sweep_cmd(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only report what would be re-dispatched.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Run one job sweep now: re-dispatch jobs whose broker message was lost.

    Workers already sweep every FLEET_SWEEP_INTERVAL_S; this is for operators (and for
    fleets that run with the worker sweeper off). A running job counts as dead only past
    the hard time limit plus FLEET_SWEEP_GRACE_S; a queued one only when no worker holds its
    message and its queue no longer does. Exit 0 whatever it found; 3 when Redis is down.
    """
    from fleet.redis_client import make_redis  # noqa: PLC0415 - only this command
    from fleet.sweeper import JobSweeper  # noqa: PLC0415 - only this command

    try:
        with _client() as client:
            broker = make_redis(client.settings, url=client.settings.effective_broker_url)
            try:
                report = JobSweeper(client, broker).sweep(dry_run=dry_run)
            finally:
                broker.close()
    except StateUnavailable as exc:
        raise _fail(str(exc), EXIT_UNAVAILABLE) from exc
    if as_json:
        typer.echo(json.dumps(report.as_dict(), indent=2))
        return
    table = Table("job_id", "was", "reason", "idle_s", "threshold_s", "new dispatch")
    for r in report.redispatched:
        table.add_row(
            r.job_id, r.state, r.reason, f"{r.idle_s:.1f}", f"{r.threshold_s:.0f}", str(r.dispatch)
        )
    console.print(table)
    verb = "would re-dispatch" if dry_run else "re-dispatched"
    err_console.print(
        f"{verb}={len(report.redispatched)} running_checked={report.running_checked} "
        f"queued_checked={report.queued_checked} queued_waiting={report.queued_waiting} "
        f"changed_meanwhile={report.changed_meanwhile}"
    )


def worker_cmd(
    ctx: typer.Context,
    *,
    concurrency: Annotated[int, typer.Option("-c", "--concurrency", min=1, help="Pool size.")] = 2,
    queues: Annotated[
        str, typer.Option("-Q", "--queues", help="Queues to consume.")
    ] = "agents,escalation",
    loglevel: Annotated[str, typer.Option("-l", "--loglevel", help="Celery log level.")] = "INFO",
) -> None:
    """Run a Celery worker for the fleet (``celery -A workers.app worker`` with our defaults).

    Settings come from FLEET_* variables; extra arguments are passed to celery worker as is.
    """
    try:
        FleetSettings.load()
    except ConfigError as exc:
        raise _fail(str(exc), EXIT_CONFIG) from exc
    cmd = [
        sys.executable, "-m", "celery", "-A", "workers.app", "worker",
        "-Q", queues, "-c", str(concurrency), "--loglevel", loglevel,
        "--without-gossip", "--without-mingle", *ctx.args,
    ]  # fmt: skip
    raise typer.Exit(subprocess.call(cmd, env=os.environ.copy()))


def register(app: typer.Typer) -> None:
    """Add ``submit``, ``jobs show|list|cancel|sweep`` and ``worker`` to ``app``."""
    app.command("submit")(submit_cmd)
    jobs = typer.Typer(help="Inspect agent jobs (records in Redis).", no_args_is_help=True)
    jobs.command("show")(show_cmd)
    jobs.command("list")(list_cmd)
    jobs.command("cancel")(cancel_cmd)
    jobs.command("sweep")(sweep_cmd)
    app.add_typer(jobs, name="jobs")
    app.command(
        "worker", context_settings={"allow_extra_args": True, "ignore_unknown_options": True}
    )(worker_cmd)
