"""Waiting on conditions (never on fixed sleeps) and finding free loopback ports."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """A condition did not become true before its deadline."""


def wait_until(
    predicate: Callable[[], T | None],
    *,
    timeout_s: float = 10.0,
    interval_s: float = 0.02,
    message: str = "condition",
) -> T:
    """Call ``predicate`` until it returns a truthy value, and return that value.

    Raises :class:`WaitTimeout` (an AssertionError, so pytest reports it as a failure) naming
    ``message`` and the last value seen when ``timeout_s`` passes first.
    """
    deadline = time.monotonic() + timeout_s
    last: T | None = None
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise WaitTimeout(
                f"timed out after {timeout_s}s waiting for {message} (last: {last!r})"
            )
        time.sleep(interval_s)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
