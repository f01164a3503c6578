"""Real ``celery worker`` processes for tests: start, SIGKILL, restart, stop cleanly.

Each worker is a separate OS process (``python -m celery -A <app> worker``) with its own
environment, log file and node name, so tests exercise real brokers, acks and redeliveries.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from fleet.testing.wait import wait_until


@dataclass
class WorkerProcess:
    """One running worker: its node name, process and log file."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    generation: int = 0

    def log(self) -> str:
        """The worker's combined stdout/stderr so far."""
        return self.log_path.read_text(errors="replace")

    def ready(self) -> bool:
        """True once Celery printed its ``ready.`` banner (and the process still runs)."""
        if self.proc.poll() is not None:
            raise RuntimeError(f"worker {self.name} exited early:\n{self.log()[-4000:]}")
        return " ready." in self.log()


@dataclass
class CeleryWorkers:
    """A set of real Celery worker processes for one test.

    ``env`` is added to the current environment (put ``FLEET_REDIS_URL`` and friends there).
    """

    app: str = "workers.app"
    env: dict[str, str] = field(default_factory=dict)
    queues: str = "agents,escalation"
    concurrency: int = 1
    pool: str = "prefork"
    extra_args: list[str] = field(default_factory=list)
    workers: list[WorkerProcess] = field(default_factory=list)
    _tmp: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="fleet-workers-")))

    def _spawn(self, index: int, generation: int) -> WorkerProcess:
        name = f"w{index}g{generation}@fleet-test"
        log_path = self._tmp / f"{name}.log"
        cmd = [
            sys.executable, "-m", "celery", "-A", self.app, "worker",
            "-n", name, "-Q", self.queues, "-c", str(self.concurrency), "-P", self.pool,
            "--loglevel", "INFO", "--without-gossip", "--without-mingle", "--without-heartbeat",
            *self.extra_args,
        ]  # fmt: skip
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        return WorkerProcess(name=name, proc=proc, log_path=log_path, generation=generation)

    def start(self, n: int = 1, *, timeout_s: float = 60.0) -> list[WorkerProcess]:
        """Start ``n`` more workers and wait until each is ready to consume."""
        started = [self._spawn(len(self.workers) + i, 0) for i in range(n)]
        self.workers.extend(started)
        for w in started:
            wait_until(w.ready, timeout_s=timeout_s, interval_s=0.05, message=f"{w.name} ready")
        return started

    def kill(self, index: int, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` (default SIGKILL) to worker ``index`` and all its pool children."""
        w = self.workers[index]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(w.proc.pid, sig)
        w.proc.wait(timeout=30)

    def restart(self, index: int, *, timeout_s: float = 60.0) -> WorkerProcess:
        """Kill worker ``index`` if it runs, then start a fresh one in its place."""
        old = self.workers[index]
        if old.proc.poll() is None:
            self.kill(index)
        new = self._spawn(index, old.generation + 1)
        self.workers[index] = new
        wait_until(new.ready, timeout_s=timeout_s, interval_s=0.05, message=f"{new.name} ready")
        return new

    def stop(self, *, timeout_s: float = 20.0) -> None:
        """Warm shutdown (SIGTERM) of every worker; SIGKILL what is left after ``timeout_s``."""
        for w in self.workers:
            if w.proc.poll() is None:
                try:
                    os.killpg(w.proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue
        for w in self.workers:
            try:
                w.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(w.proc.pid, signal.SIGKILL)
                w.proc.wait(timeout=10)
        self.workers.clear()
