"""pytest fixtures on real parts: a Redis container and real Celery worker processes.

Enable with ``pytest_plugins = ["fleet.testing.pytest_plugin"]``.

- ``redis_server`` (session): one shared Redis container; ``redis_url`` flushes it per test.
- ``redis_container`` (function): a private container for fault injection (pause, kill...).
- ``fleet_settings``: :class:`~fleet.settings.FleetSettings` pointing at ``redis_url``.
- ``celery_workers``: a :class:`~fleet.testing.celery_workers.CeleryWorkers` stopped at teardown.

Without a Docker engine the container tests skip, unless ``FLEET_REQUIRE_DOCKER=1`` (CI),
which turns the skip into a failure.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from fleet.settings import FleetSettings
from fleet.testing.celery_workers import CeleryWorkers
from fleet.testing.redis_container import RedisContainer, docker_available


def _require_docker() -> None:
    if docker_available():
        return
    msg = "no Docker engine: start one (scripts/test does) to run container tests"
    if os.environ.get("FLEET_REQUIRE_DOCKER") == "1":
        pytest.fail(msg + " [FLEET_REQUIRE_DOCKER=1]", pytrace=False)
    pytest.skip(msg)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisContainer]:
    """One Redis container for the whole session (flushed per test by ``redis_url``)."""
    _require_docker()
    server = RedisContainer().start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisContainer) -> str:
    """URL of the shared Redis, flushed before the test."""
    redis_server.flush()
    return redis_server.url


@pytest.fixture
def redis_container() -> Iterator[RedisContainer]:
    """A private Redis container for one test, free to pause, kill and restart."""
    _require_docker()
    server = RedisContainer().start()
    yield server
    server.stop()


@pytest.fixture
def fleet_settings(redis_url: str) -> FleetSettings:
    """Settings on the shared test Redis, with the ``test`` namespace."""
    return FleetSettings.load(redis_url=redis_url, namespace="test")


@pytest.fixture
def celery_workers(fleet_settings: FleetSettings) -> Iterator[CeleryWorkers]:
    """Real worker processes (call ``.start(n)``) configured for ``fleet_settings``."""
    env = {
        "FLEET_REDIS_URL": fleet_settings.redis_url,
        "FLEET_NAMESPACE": fleet_settings.namespace,
    }
    workers = CeleryWorkers(env=env)
    yield workers
    workers.stop()
