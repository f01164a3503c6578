"""The ``fleet`` command: registry, presets, breakers, simulated providers, jobs, the demo.

Each command group lives in its own module and exposes ``register(app)``. Exit codes scripts
can rely on: 0 success, 1 operation failed (e.g. a job failed, a check found problems),
2 usage or configuration error (bad flag, invalid settings or registry), 3 state unavailable
(Redis did not answer); they live in :mod:`fleet.cli._common`.
"""

from __future__ import annotations

import typer

from fleet.cli import breakers_cmd, demo_cmd, escalations_cmd, jobs_cmd, registry_cmd, sim_cmd


def build_app() -> typer.Typer:
    """Assemble the ``fleet`` Typer application from every command module."""
    app = typer.Typer(
        name="fleet",
        help="agent-fleet: LLM-agent jobs on Celery with one fleet-wide circuit breaker.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )
    for module in (registry_cmd, breakers_cmd, sim_cmd, jobs_cmd, escalations_cmd, demo_cmd):
        module.register(app)
    return app


def main() -> None:
    """Console-script entry point of ``fleet``."""
    build_app()()
