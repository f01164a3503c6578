"""``fleet sim-provider``: run a simulated LLM provider, switch its fault modes, read counts.

``fleet sim-provider --port P [--mode MODE] [--latency-ms N] [--name NAME] [--control-port C]``
serves until Ctrl-C; ``fleet sim-provider set-mode --port P MODE [--p 0.3]`` and
``fleet sim-provider stats --port P [--json]`` talk to its control port (default P+10000).
Exit codes: 0 ok, 1 the simulator's control port did not answer, 2 bad usage.
"""

from __future__ import annotations

import json
import logging
from typing import Annotated, Any

import typer

from fleet.cli._common import EXIT_CONFIG, EXIT_FAILED, JsonOpt
from fleet.providers.simulated import MODES, SimControl, SimulatedProvider, serve_until_signalled

_MODES_HELP = ", ".join(MODES)
PortOpt = Annotated[int, typer.Option("--port", help="API port of the simulator on 127.0.0.1.")]
ControlOpt = Annotated[
    int | None, typer.Option("--control-port", help="Control port (default: port + 10000).")
]


def _control(port: int, control_port: int | None) -> SimControl:
    return SimControl(port, control_port)


def _fail(message: str, code: int) -> typer.Exit:
    typer.echo(message, err=True)
    return typer.Exit(code)


def _print_stats(stats: dict[str, Any], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(stats, indent=2, sort_keys=True))
        return
    listening = "listening" if stats.get("listening") else "NOT listening"
    typer.echo(
        f"{stats.get('name')} port {stats.get('port')} ({listening}) mode {stats.get('mode')} "
        f"p={stats.get('p')} retry_after_s={stats.get('retry_after_s')} "
        f"latency_ms={stats.get('latency_ms')} slow_delay_s={stats.get('slow_delay_s')}"
    )
    typer.echo(f"total requests: {stats.get('total_requests')}")
    for mode, count in sorted(stats.get("counts", {}).items()):
        if count:
            typer.echo(f"  {mode:<15} {count}")


def register(app: typer.Typer) -> None:
    """Add the ``sim-provider`` command group to ``app``."""
    group = typer.Typer(
        help=(
            "Run a simulated OpenAI/Anthropic provider on 127.0.0.1 with fault modes you can "
            f"switch at runtime ({_MODES_HELP}). Without a subcommand, serve until Ctrl-C."
        ),
        invoke_without_command=True,
        no_args_is_help=False,
    )

    @group.callback()
    def serve(
        ctx: typer.Context,
        *,
        port: Annotated[
            int | None, typer.Option("--port", help="API port to serve on 127.0.0.1.")
        ] = None,
        mode: Annotated[str, typer.Option("--mode", help=f"Initial mode: {_MODES_HELP}.")] = (
            "healthy"
        ),
        latency_ms: Annotated[
            float, typer.Option("--latency-ms", help="Delay added to every answer, in ms.")
        ] = 0.0,
        name: Annotated[str, typer.Option("--name", help="Provider name in answers/logs.")] = (
            "sim"
        ),
        control_port: ControlOpt = None,
        p: Annotated[float, typer.Option("--p", help="Failure probability of 'flaky'.")] = 0.5,
        retry_after_s: Annotated[
            float, typer.Option("--retry-after-s", help="Retry-After sent by 'rate_limited'.")
        ] = 1.0,
        slow_delay_s: Annotated[
            float, typer.Option("--slow-delay-s", help="How long 'slow' waits before answering.")
        ] = 60.0,
        seed: Annotated[int, typer.Option("--seed", help="Seed of the 'flaky' RNG.")] = 0,
    ) -> None:
        """Serve a simulated provider (when no subcommand is given)."""
        if ctx.invoked_subcommand is not None:
            return
        if port is None:
            raise _fail(
                "fleet sim-provider: --port is required to serve (e.g. --port 8100)", EXIT_CONFIG
            )
        try:
            sim = SimulatedProvider(
                port=port,
                name=name,
                mode=mode,
                control_port=control_port,
                latency_ms=latency_ms,
                p=p,
                retry_after_s=retry_after_s,
                slow_delay_s=slow_delay_s,
                seed=seed,
            )
        except ValueError as exc:
            raise _fail(f"fleet sim-provider: {exc}", EXIT_CONFIG) from exc
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        try:
            serve_until_signalled(sim)
        except OSError as exc:
            raise _fail(
                f"fleet sim-provider: cannot listen on port {port}: {exc}", EXIT_FAILED
            ) from exc

    @group.command("set-mode")
    def set_mode(
        *,
        mode: Annotated[str, typer.Argument(help=f"New mode: {_MODES_HELP}.")],
        port: PortOpt,
        control_port: ControlOpt = None,
        p: Annotated[float | None, typer.Option("--p", help="Failure probability (flaky).")] = None,
        retry_after_s: Annotated[
            float | None, typer.Option("--retry-after-s", help="Retry-After (rate_limited).")
        ] = None,
        latency_ms: Annotated[
            float | None, typer.Option("--latency-ms", help="Delay of every answer, in ms.")
        ] = None,
        slow_delay_s: Annotated[
            float | None, typer.Option("--slow-delay-s", help="Delay of 'slow', in seconds.")
        ] = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Switch a running simulator's fault mode (e.g. `set-mode --port 8100 flaky --p 0.3`)."""
        try:
            stats = _control(port, control_port).set_mode(
                mode,
                p=p,
                retry_after_s=retry_after_s,
                latency_ms=latency_ms,
                slow_delay_s=slow_delay_s,
            )
        except ValueError as exc:
            raise _fail(f"fleet sim-provider set-mode: {exc}", EXIT_CONFIG) from exc
        except ConnectionError as exc:
            raise _fail(f"fleet sim-provider set-mode: {exc}", EXIT_FAILED) from exc
        _print_stats(stats, as_json)

    @group.command("stats")
    def stats(
        *,
        port: PortOpt,
        control_port: ControlOpt = None,
        as_json: JsonOpt = False,
        reset: Annotated[
            bool, typer.Option("--reset", help="Zero the counters after reading them.")
        ] = False,
    ) -> None:
        """Show a running simulator's mode and request counts per mode."""
        control = _control(port, control_port)
        try:
            data = control.stats()
            if reset:
                control.reset_counts()
        except ConnectionError as exc:
            raise _fail(f"fleet sim-provider stats: {exc}", EXIT_FAILED) from exc
        _print_stats(data, as_json)

    app.add_typer(group, name="sim-provider")
