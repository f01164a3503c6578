"""The demo's moving parts: embedded Redis, simulated providers, registry, worker processes."""

from __future__ import annotations

import shutil
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from fleet.embedded import EmbeddedRedis
from fleet.local import write_local_registry
from fleet.providers.simulated import SimControl, SimulatedProvider
from fleet.settings import FleetSettings
from fleet.testing.celery_workers import CeleryWorkers
from fleet.testing.wait import free_port

# Demo breaker: trip after 3 consecutive failures, 1 s first break, one good probe closes.
DEMO_BREAKER: dict[str, object] = {
    "consecutive_failures": 3,
    "open_base_ms": 1000,
    "open_cap_ms": 4000,
    "half_open_successes": 1,
    "probe_lease_ms": 5000,
    "window_ms": 10_000,
}


@dataclass
class DemoEnvironment:
    """Starts everything on enter, stops everything on exit (in reverse order)."""

    workers: int = 2
    latency_ms: float = 40.0
    namespace: str = "demo"
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="fleet-demo-")))
    settings: FleetSettings | None = None
    primary: SimControl | None = None
    backup: SimControl | None = None
    pool: CeleryWorkers | None = None
    _stack: ExitStack = field(default_factory=ExitStack)

    def __enter__(self) -> DemoEnvironment:
        try:
            self._start()
        except BaseException:
            self._stack.close()
            raise
        return self

    def _start(self) -> None:
        # first registered, so removed last: after workers, providers and Redis stopped
        self._stack.callback(shutil.rmtree, self.workdir, ignore_errors=True)
        redis_server = self._stack.enter_context(EmbeddedRedis(workdir=self.workdir / "redis"))
        primary_port, backup_port = free_port(), free_port()
        for port, name in ((primary_port, "sim-primary"), (backup_port, "sim-backup")):
            self._stack.enter_context(
                SimulatedProvider(port=port, name=name, latency_ms=self.latency_ms)
            )
        registry_path = write_local_registry(
            self.workdir / "registry.toml",
            primary_port=primary_port,
            backup_port=backup_port,
            breaker=DEMO_BREAKER,
            sim_open_base_ms=1000,
        )
        self.primary, self.backup = SimControl(primary_port), SimControl(backup_port)
        env = {
            "FLEET_REDIS_URL": redis_server.url,
            "FLEET_NAMESPACE": self.namespace,
            "FLEET_REGISTRY_PATH": str(registry_path),
        }
        self.settings = FleetSettings.load(
            redis_url=redis_server.url, namespace=self.namespace, registry_path=registry_path
        )
        self.pool = CeleryWorkers(env=env, concurrency=1)
        self._stack.callback(self.pool.stop)
        self.pool.start(self.workers)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stack.close()
