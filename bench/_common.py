"""Shared pieces of the benchmarks: a throwaway redis-server, round-trip counting, stats."""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis

from fleet.testing.wait import free_port, wait_until

_local = threading.local()


class CountingConnection(redis.Connection):
    """A redis-py connection that counts the round trips made by each thread.

    One ``send_packed_command`` is one request on the wire (a pipeline packs all of its
    commands into one), so it counts what the calling thread waits on; work done by a
    background thread is counted on that thread, not the caller's.
    """

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        _local.count = getattr(_local, "count", 0) + 1
        super().send_packed_command(command, check_health)


def thread_round_trips() -> int:
    """Round trips made so far by the current thread on counting clients."""
    return int(getattr(_local, "count", 0))


def counting_client(url: str) -> redis.Redis:
    """A Redis client whose round trips are counted per thread."""
    pool = redis.ConnectionPool.from_url(url, connection_class=CountingConnection)
    return redis.Redis(connection_pool=pool)


@contextmanager
def redis_server() -> Iterator[str]:
    """A private redis-server on 127.0.0.1 (no persistence); yields its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server not found: run `bash scripts/test` once, or apt-get it")
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="fleet-bench-redis-")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", workdir],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    try:
        probe = redis.Redis.from_url(url, socket_connect_timeout=0.2)
        wait_until(lambda: _ping(probe), timeout_s=10, message="bench redis")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


def _ping(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def percentile(values: list[float], q: float) -> float:
    """The ``q``-quantile (0..1) of ``values``."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def summary_us(samples_s: list[float]) -> dict[str, float]:
    """p50/p99/mean in microseconds of per-call durations in seconds."""
    us = [s * 1e6 for s in samples_s]
    return {
        "p50_us": percentile(us, 0.5),
        "p99_us": percentile(us, 0.99),
        "mean_us": statistics.fmean(us),
    }


def cpu_note() -> str:
    """One line about the machine, printed with every result table."""
    return f"cpus={os.cpu_count()} pid={os.getpid()}"
