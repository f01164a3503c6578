"""Rendering of the demo: a live dashboard while it runs and a summary table at the end."""

from __future__ import annotations

import time

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table

from fleet.demo.scenario import DemoReport, Snapshot

STATE_STYLE = {
    "closed": "green",
    "open": "bold red",
    "half_open": "yellow",
    "forced_open": "bold magenta",
    "forced_closed": "cyan",
    "disabled": "dim",
}


def render_frame(snap: Snapshot) -> RenderableType:
    """The live dashboard for one snapshot."""
    breakers = Table(title="fleet-wide breakers (Redis)", expand=True)
    for col in ("scope", "state", "calls", "failures", "fail rate", "probe in", "trips"):
        breakers.add_column(col)
    for b in snap.breakers:
        until = "-"
        if b.open_until_ms and b.state == "open":
            until = f"{max(0.0, (b.open_until_ms - b.now_ms) / 1000):.1f}s"
        style = STATE_STYLE.get(b.state, "")
        breakers.add_row(
            str(b.scope), f"[{style}]{b.state}[/]", str(b.calls), str(b.failures),
            f"{b.failure_rate:.0%}", until, str(b.trips),
        )  # fmt: skip
    providers = Table(title="simulated providers", expand=True)
    for col in ("provider", "mode", "requests"):
        providers.add_column(col)
    for name, stats in snap.providers.items():
        mode = str(stats.get("mode", "?"))
        style = "green" if mode == "healthy" else "bold red"
        providers.add_row(name, f"[{style}]{mode}[/]", str(stats.get("total_requests", 0)))
    jobs = Table(title=f"jobs ({snap.submitted_pipelines} pipelines submitted)", expand=True)
    for col in ("queued", "running", "succeeded", "escalated", "failed", "open escalations"):
        jobs.add_column(col)
    jobs.add_row(
        *(str(snap.jobs.get(s, 0)) for s in ("queued", "running", "succeeded", "escalated",
                                               "failed")),
        str(snap.escalations_open),
    )  # fmt: skip
    events = Table(title="latest breaker events (fleet:events stream)", expand=True)
    for col in ("scope", "transition", "trigger", "threshold / value", "worker"):
        events.add_column(col)
    for e in snap.events:
        if e.kind != "transition":
            events.add_row("-", e.kind, "-", "-", e.worker or "-")
            continue
        events.add_row(
            e.scope, f"{e.from_state} → {e.to_state}", e.trigger,
            f"{e.threshold:g} / {e.value:g}", e.worker,
        )  # fmt: skip
    header = f"[bold]phase:[/] {snap.phase}    [dim]t+{snap.elapsed_s:.1f}s[/]"
    return Panel(Group(header, breakers, providers, jobs, events), title="agent-fleet demo")


def render_report(report: DemoReport) -> RenderableType:
    """The summary: jobs by terminal state, calls per provider, transitions, cost."""
    jobs = Table(title="jobs by terminal state")
    jobs.add_column("state")
    jobs.add_column("jobs", justify="right")
    for state in ("submitted", "succeeded", "escalated", "failed", "cancelled"):
        jobs.add_row(state, str(report.counts.get(state, 0)))
    jobs.add_row("degraded (succeeded)", str(report.degraded))
    verdict = "[green]yes[/]" if report.conserved else "[bold red]NO[/]"
    jobs.add_row("submitted = sum of terminal", verdict)

    calls = Table(title="requests per provider (by mode served)")
    calls.add_column("provider")
    calls.add_column("total", justify="right")
    calls.add_column("by mode")
    for name, counts in report.calls.items():
        modes = ", ".join(f"{m}={n}" for m, n in sorted(counts.items()) if m != "total" and n)
        calls.add_row(name, str(counts.get("total", 0)), modes or "-")

    trans = Table(title="breaker transitions (each announced once)")
    trans.add_column("scope")
    trans.add_column("transition")
    trans.add_column("count", justify="right")
    for (scope, frm, to), n in sorted(report.transitions.items()):
        trans.add_row(scope, f"{frm} → {to}", str(n))

    other = Table(title="escalations and cost")
    other.add_column("what")
    other.add_column("value", justify="right")
    other.add_row("pipelines submitted", str(report.pipelines))
    other.add_row("escalations parked", str(report.escalations_parked))
    other.add_row("auto-replayed when breakers closed", str(report.escalations_auto_replayed))
    other.add_row("requeued by the operator step", str(report.escalations_requeued_by_operator))
    for policy, n in sorted(report.by_policy.items()):
        other.add_row(f"jobs settled by policy {policy}", str(n))
    other.add_row("cost (USD, registry prices)", f"{report.cost_usd:.6f}")
    other.add_row("settled", "yes" if report.settled else "no (timed out)")
    other.add_row("duration", f"{report.elapsed_s:.1f}s")
    return Group(jobs, calls, trans, other)


def narrate(message: str, start: float) -> str:
    """One narration line with the time since ``start``."""
    return f"[dim]t+{time.monotonic() - start:5.1f}s[/] {message}"
