"""A real Redis server in a container, with fault injection, for tests.

Uses testcontainers with **host networking** (no bridge: traffic stays on 127.0.0.1) and a
port passed on the command line. The image is ``$FLEET_REDIS_IMAGE`` (default the public
``redis:7-alpine``; ``scripts/test`` builds ``local/redis:7`` where no registry is reachable).
The server runs with ``appendonly yes`` and ``maxmemory-policy noeviction``, as production
should.
"""

from __future__ import annotations

import os
from typing import Any

import redis

from fleet.testing.wait import free_port, wait_until

DEFAULT_IMAGE = "redis:7-alpine"


def docker_available() -> bool:
    """True when a Docker engine answers a ping."""
    try:
        import docker

        client = docker.from_env(timeout=5)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


class RedisContainer:
    """A Redis server in a container on ``127.0.0.1:<port>``.

    ``pause()`` freezes it (clients see timeouts: a hung dependency), ``kill()`` stops it
    abruptly (clients see refused connections), ``restart()`` brings it back with its AOF data.
    """

    def __init__(self, image: str | None = None, port: int | None = None) -> None:
        self.image = image or os.environ.get("FLEET_REDIS_IMAGE", DEFAULT_IMAGE)
        self.port = port or free_port()
        self._container: Any = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisContainer:
        """Start the container and wait until Redis answers PING."""
        os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
        from testcontainers.core.container import DockerContainer

        command = (
            f"redis-server --port {self.port} --bind 127.0.0.1 --dir /tmp "
            "--appendonly yes --appendfsync everysec --save '' "
            "--maxmemory-policy noeviction --protected-mode no"
        )
        self._container = (
            DockerContainer(self.image).with_kwargs(network_mode="host").with_command(command)
        )
        self._container.start()
        self.wait_ready()
        return self

    def client(self, **kwargs: Any) -> redis.Redis:
        """A new redis-py client for this server."""
        kwargs.setdefault("socket_timeout", 2.0)
        kwargs.setdefault("socket_connect_timeout", 2.0)
        return redis.Redis.from_url(self.url, **kwargs)

    def ping(self) -> bool:
        """True when the server answers PING within 0.5 s."""
        try:
            with redis.Redis(
                port=self.port, socket_timeout=0.5, socket_connect_timeout=0.5
            ) as conn:
                return bool(conn.ping())
        except redis.RedisError:
            return False

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Block until PING succeeds (raises WaitTimeout after ``timeout_s``)."""
        wait_until(self.ping, timeout_s=timeout_s, interval_s=0.05, message=f"redis :{self.port}")

    def _wrapped(self) -> Any:
        if self._container is None:
            raise RuntimeError("container not started")
        return self._container.get_wrapped_container()

    def pause(self) -> None:
        """Freeze the server: connections stay open, nothing answers (timeouts)."""
        self._wrapped().pause()

    def unpause(self) -> None:
        """Thaw a paused server."""
        self._wrapped().unpause()
        self.wait_ready()

    def kill(self) -> None:
        """SIGKILL the server: clients see refused connections."""
        self._wrapped().kill()

    def restart(self) -> None:
        """Start a killed server again (or restart a running one); AOF data is replayed."""
        wrapped = self._wrapped()
        wrapped.reload()
        if wrapped.status == "running":
            wrapped.restart(timeout=5)
        else:
            wrapped.start()
        self.wait_ready()

    def flush(self) -> None:
        """FLUSHALL: isolate one test from the next."""
        with self.client() as conn:
            conn.flushall()

    def stop(self) -> None:
        """Remove the container."""
        if self._container is not None:
            try:
                self._wrapped().reload()
                if self._wrapped().status == "paused":
                    self._wrapped().unpause()
            except Exception:  # noqa: S110 - best effort before removal
                pass
            self._container.stop()
            self._container = None
