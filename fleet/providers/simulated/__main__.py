"""``python -m fleet.providers.simulated --port P [--mode MODE] ...``: serve until signalled.

Standard library only, so it runs standalone in a minimal container. Run with ``--help``.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from .modes import MODES
from .server import SimulatedProvider, serve_until_signalled


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser (flags mirror ``fleet sim-provider``)."""
    parser = argparse.ArgumentParser(
        prog="python -m fleet.providers.simulated",
        description="Simulated OpenAI/Anthropic provider with switchable fault modes.",
    )
    parser.add_argument("--port", type=int, required=True, help="API port on 127.0.0.1")
    parser.add_argument("--mode", choices=MODES, default="healthy", help="initial fault mode")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="delay of every answer")
    parser.add_argument("--name", default="sim", help="provider name used in answers and logs")
    parser.add_argument(
        "--control-port", type=int, default=None, help="control port (default port+10000)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="bind address (keep loopback)")
    parser.add_argument("--p", type=float, default=0.5, help="failure probability for flaky")
    parser.add_argument("--retry-after-s", type=float, default=1.0, help="Retry-After on 429")
    parser.add_argument("--slow-delay-s", type=float, default=60.0, help="delay of slow mode")
    parser.add_argument("--seed", type=int, default=0, help="seed of the flaky-mode RNG")
    parser.add_argument("--log-level", default="INFO", help="logging level (DEBUG, INFO...)")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Parse ``argv`` and serve until SIGINT/SIGTERM."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    sim = SimulatedProvider(
        port=args.port,
        name=args.name,
        mode=args.mode,
        control_port=args.control_port,
        host=args.host,
        latency_ms=args.latency_ms,
        p=args.p,
        retry_after_s=args.retry_after_s,
        slow_delay_s=args.slow_delay_s,
        seed=args.seed,
    )
    serve_until_signalled(sim)


if __name__ == "__main__":
    main()
