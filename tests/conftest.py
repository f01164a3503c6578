"""Test configuration: the fleet pytest plugin gives real Redis and real Celery workers;
``tests.llm_fixtures`` adds simulated providers and a FleetClient routed to them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from fleet.redis_client import make_redis
from fleet.settings import FleetSettings

pytest_plugins = ["fleet.testing.pytest_plugin", "tests.llm_fixtures"]


@pytest.fixture
def client(fleet_settings: FleetSettings) -> Iterator[redis.Redis]:
    """A Redis client on the test database with fleet's timeouts (``make_redis``)."""
    conn = make_redis(fleet_settings)
    yield conn
    conn.close()
