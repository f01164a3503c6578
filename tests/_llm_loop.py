"""A load process for the outage tests: calls llm_call in a loop and reports each result.

    python -m tests._llm_loop WORKER_NAME

Settings come from FLEET_* variables. Each call's outcome is appended as JSON to the Redis list
``<ns>:test:calls``; the loop ends when the list ``<ns>:test:stop`` is not empty.

No sleeps: the simulated providers' latency paces the calls, and after ``AllRoutesFailed`` the
loop waits for the stop signal for at most ``retry_after_s``, as an application should.
"""

from __future__ import annotations

import json
import sys
import time

import redis

from fleet.errors import AllRoutesFailed
from fleet.llm import FleetClient
from fleet.settings import FleetSettings

MESSAGES = [{"role": "user", "content": "collect facts about circuit breakers"}]


def main(worker: str) -> None:
    """Loop until told to stop."""
    settings = FleetSettings.load()
    out = redis.Redis.from_url(settings.redis_url, socket_timeout=10)  # side channel, blocks
    calls_key, stop_key = settings.key("test", "calls"), settings.key("test", "stop")
    with FleetClient(settings) as client:
        while not out.exists(stop_key):
            record: dict[str, object] = {"worker": worker, "at": time.time()}
            try:
                result = client.llm_call("data_collection", MESSAGES)
                record.update(model=result.model, outcomes=[a.outcome for a in result.attempts])
            except AllRoutesFailed as exc:
                record.update(
                    error="all_routes_failed",
                    retry_after_s=exc.retry_after_s,
                    outcomes=[a.outcome for a in exc.attempts],
                )
                out.rpush(calls_key, json.dumps(record))
                # come back after retry_after_s, or stop at once when told (BLMOVE onto the
                # same list leaves the stop signal in place for the other loaders)
                out.blmove(stop_key, stop_key, min(exc.retry_after_s or 0.05, 5.0))
                continue
            out.rpush(calls_key, json.dumps(record))


if __name__ == "__main__":
    main(sys.argv[1])
