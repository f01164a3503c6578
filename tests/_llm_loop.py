"""A load process for the outage tests: calls llm_call in a loop and reports each result.

    python -m tests._llm_loop WORKER_NAME

Settings come from FLEET_* variables. Each call's outcome is appended as JSON to the Redis list
``<ns>:test:calls``; the loop ends when the key ``<ns>:test:stop`` exists.
"""

from __future__ import annotations

import json
import sys
import time

from fleet.errors import AllRoutesFailed
from fleet.llm import FleetClient
from fleet.redis_client import make_redis
from fleet.settings import FleetSettings

MESSAGES = [{"role": "user", "content": "collect facts about circuit breakers"}]


def main(worker: str) -> None:
    """Loop until told to stop, pacing one call every 10 ms."""
    settings = FleetSettings.load()
    out = make_redis(settings)
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
            time.sleep(0.01)


if __name__ == "__main__":
    main(sys.argv[1])
