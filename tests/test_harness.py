"""The test harness itself: a real Redis container with fault injection."""

from __future__ import annotations

import pytest
import redis

from fleet.testing import WaitTimeout, free_port, wait_until
from fleet.testing.redis_container import RedisContainer


def test_wait_until_returns_value_and_times_out() -> None:
    calls = iter([0, 0, 7])
    assert wait_until(lambda: next(calls), timeout_s=5, interval_s=0) == 7
    with pytest.raises(WaitTimeout, match="never"):
        wait_until(lambda: False, timeout_s=0.05, message="never")


def test_free_port_is_bindable() -> None:
    import socket

    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_redis_url_is_flushed_per_test(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    assert client.dbsize() == 0
    client.set("leftover", 1)


def test_pause_kill_restart(redis_container: RedisContainer) -> None:
    client = redis_container.client(socket_timeout=0.2, socket_connect_timeout=0.2)
    client.set("k", "v")
    redis_container.pause()
    with pytest.raises(redis.TimeoutError):
        client.get("k")
    redis_container.unpause()
    assert client.get("k") == b"v"
    # AOF fsyncs every second; force the write before the kill.
    client.execute_command("BGREWRITEAOF")
    wait_until(
        lambda: client.info("persistence")["aof_rewrite_in_progress"] == 0,
        message="AOF rewrite",
    )
    redis_container.kill()
    with pytest.raises(redis.ConnectionError):
        client.ping()
    redis_container.restart()
    assert redis_container.client().get("k") == b"v"
