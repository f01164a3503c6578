"""Fixtures for llm_call tests: two real simulated providers and a registry pointing at them."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fleet.llm import FleetClient
from fleet.local import write_local_registry
from fleet.providers.simulated import SimControl, SimulatedProvider
from fleet.registry import Registry, load_registry
from fleet.settings import FleetSettings
from fleet.testing.wait import free_port

# Fast, deterministic breaker for tests: trip after 3 consecutive failures, short breaks,
# one probe closes, no rate-based trips (minimum_calls out of reach), no jitter.
FAST_BREAKER: dict[str, object] = {
    "consecutive_failures": 3,
    "minimum_calls": 1000,
    "open_base_ms": 300,
    "open_cap_ms": 5000,
    "probe_lease_ms": 5000,
    "half_open_successes": 1,
    "jitter_ratio": 0.0,
    "window_ms": 10_000,
}


@dataclass
class LocalFleet:
    """A FleetClient on two simulated providers, with their control handles."""

    settings: FleetSettings
    registry_path: Path
    client: FleetClient
    primary: SimControl
    backup: SimControl

    def registry(self) -> Registry:
        """The registry the client uses."""
        return self.client.registry


@pytest.fixture
def sim_ports() -> tuple[int, int]:
    """Two free ports for the primary and backup simulated providers."""
    return free_port(), free_port()


@pytest.fixture
def local_fleet(tmp_path: Path, redis_url: str, sim_ports: tuple[int, int]) -> Iterator[LocalFleet]:
    """Two healthy simulated providers and a FleetClient routing the ``local`` preset to them."""
    primary_port, backup_port = sim_ports
    registry_path = write_local_registry(
        tmp_path / "registry.toml",
        primary_port=primary_port,
        backup_port=backup_port,
        breaker=FAST_BREAKER,
        sim_open_base_ms=300,
    )
    settings = FleetSettings.load(
        redis_url=redis_url, namespace="test", registry_path=registry_path
    )
    with (
        SimulatedProvider(port=primary_port, name="sim-primary"),
        SimulatedProvider(port=backup_port, name="sim-backup"),
    ):
        client = FleetClient(settings, registry=load_registry(registry_path))
        try:
            yield LocalFleet(
                settings, registry_path, client, SimControl(primary_port), SimControl(backup_port)
            )
        finally:
            client.close()
