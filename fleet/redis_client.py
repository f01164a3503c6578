"""Factory for Redis clients with agent-fleet's tight timeouts. No module-level clients."""

from __future__ import annotations

from pathlib import Path

import redis

from fleet.settings import FleetSettings


def make_redis(settings: FleetSettings, *, url: str | None = None) -> redis.Redis:
    """A Redis client for ``url`` (default ``settings.redis_url``) with short socket timeouts.

    Bytes in, bytes out (``decode_responses=False``): Lua scripts and streams exchange bytes.
    Timeouts come from ``FLEET_SOCKET_TIMEOUT_S`` / ``FLEET_SOCKET_CONNECT_TIMEOUT_S`` so that a
    hung Redis costs a caller at most that long; health checks keep idle connections honest.
    """
    return redis.Redis.from_url(
        url or settings.redis_url,
        socket_timeout=settings.socket_timeout_s,
        socket_connect_timeout=settings.socket_connect_timeout_s,
        health_check_interval=30,
        retry_on_timeout=False,
    )


def load_lua(name: str) -> str:
    """The text of the Lua script ``fleet/lua/<name>`` (shipped as package data).

    Read by path: with editable installs on Python 3.11, ``importlib.resources`` can trip over
    the finder's path hook when ``fleet`` resolves as a namespace package.
    """
    return (Path(__file__).with_name("lua") / name).read_text(encoding="utf-8")
