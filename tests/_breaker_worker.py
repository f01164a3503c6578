"""A fleet worker process for tests/test_breaker_fleet.py: one FleetBreaker in its own process.

Run as ``python -m tests._breaker_worker --url URL --namespace NS --worker ID --mode MODE ...``
from the repository root. Modes:

- ``fail``: call a failing "provider" (the outcome is decided here: FAILURE) until the key
  ``<ns>:test:stop`` exists; probes are wrapped in an INCR/DECR gauge with a max.
- ``succeed``: same loop, every call succeeds.
- ``hold_probe``: acquire until a probe lease is granted, report it, then hang (to be killed).
- ``old_gen``: acquire once, report the generation, wait for ``<ns>:test:go``, record FAILURE.
- ``pace``: succeed until the file ``--stop-file`` exists, writing every decision as a JSON
  line to ``--out`` (works while Redis is paused).

Every transition this process is told about is RPUSHed (JSON) to ``<ns>:test:obs``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import redis

from breaker_service import (
    BreakerListener,
    BreakerPolicy,
    EventLog,
    FleetBreaker,
    Outcome,
    OutcomeClass,
    Permit,
    RedisStore,
    Rejection,
    Scope,
    StoreGuard,
    Transition,
)
from breaker_service.listeners import TransitionSource
from fleet.redis_client import make_redis
from fleet.settings import FleetSettings

SCOPE = Scope("prov")

# Gauge around a probe: INCR, and keep the highest value seen.
GAUGE_UP = """
local v = redis.call('INCR', KEYS[1])
local m = tonumber(redis.call('GET', KEYS[2]) or '0')
if v > m then redis.call('SET', KEYS[2], v) end
return v
"""


class Observer(BreakerListener):
    """Reports transitions (and recovery) to Redis or to the output file."""

    def __init__(self, side: redis.Redis | None, ns: str, worker: str, out: Any) -> None:
        self.side, self.ns, self.worker, self.out = side, ns, worker, out

    def on_transition(self, transition: Transition, *, source: TransitionSource) -> None:
        row = {
            "worker": self.worker,
            "scope": str(transition.scope),
            "from": transition.from_state,
            "to": transition.to_state,
            "trigger": transition.trigger,
            "generation": transition.generation,
            "source": source,
        }
        if source == "shared" and self.side is not None:
            self.side.rpush(f"{self.ns}:test:obs", json.dumps(row))

    def on_store_recovered(self, *, degraded_s: float) -> None:
        if self.out is not None:
            self.out.write(json.dumps({"event": "recovered", "degraded_s": degraded_s}) + "\n")
            self.out.flush()


def _loop(breaker: FleetBreaker, side: redis.Redis, ns: str, outcome: OutcomeClass) -> None:
    stop = f"{ns}:test:stop"
    while not side.exists(stop):
        decision = breaker.acquire([SCOPE])
        if isinstance(decision, Rejection):
            side.hincrby(f"{ns}:test:rejects", decision.reason, 1)
            time.sleep(min(decision.retry_after_s, 0.02))  # workload pacing, not a test wait
            continue
        probe = decision.decision == "probe"
        if probe:
            side.eval(GAUGE_UP, 2, f"{ns}:test:gauge", f"{ns}:test:gauge_max")
            side.incr(f"{ns}:test:probes")
        time.sleep(0.005)  # the simulated provider call
        if probe:
            side.decr(f"{ns}:test:gauge")
        breaker.record(decision, Outcome(outcome, latency_ms=5.0))


def _hold_probe(breaker: FleetBreaker, side: redis.Redis, ns: str) -> None:
    while True:
        decision = breaker.acquire([SCOPE])
        if isinstance(decision, Permit) and decision.decision == "probe":
            side.rpush(f"{ns}:test:holding", json.dumps([g.generation for g in decision.grants]))
            threading.Event().wait()  # hang with the lease until SIGKILL
        time.sleep(0.01)


def _old_gen(breaker: FleetBreaker, side: redis.Redis, ns: str) -> None:
    decision = breaker.acquire([SCOPE])
    assert isinstance(decision, Permit), decision
    side.rpush(
        f"{ns}:test:acquired", json.dumps([decision.decision, decision.grants[0].generation])
    )
    side.blpop([f"{ns}:test:go"], timeout=60)
    breaker.record(decision, Outcome(OutcomeClass.FAILURE, latency_ms=1.0))
    side.rpush(f"{ns}:test:done", "1")


def _pace(breaker: FleetBreaker, out: Any, stop_file: Path) -> None:
    while not stop_file.exists():
        started = time.monotonic()
        row: dict[str, Any]
        try:
            decision = breaker.acquire([SCOPE])
            if isinstance(decision, Permit):
                breaker.record(decision, Outcome(OutcomeClass.SUCCESS, latency_ms=1.0))
                row = {"d": decision.decision}
            else:
                row = {"d": "reject", "reason": decision.reason}
        except Exception as exc:  # the test asserts that this never happens
            row = {"d": "error", "error": repr(exc)}
        row["ms"] = round((time.monotonic() - started) * 1000, 1)
        out.write(json.dumps(row) + "\n")
        out.flush()
        time.sleep(0.01)  # pacing


def main() -> None:
    """Parse arguments and run one mode."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--namespace", required=True)
    ap.add_argument("--worker", required=True)
    ap.add_argument("--mode", required=True)
    ap.add_argument("--policy", default="{}")
    ap.add_argument("--fallback", default="local")
    ap.add_argument("--out")
    ap.add_argument("--stop-file")
    args = ap.parse_args()
    settings = FleetSettings.load(
        redis_url=args.url,
        namespace=args.namespace,
        worker_id=args.worker,
        breaker_fallback=args.fallback,
    )
    policy = BreakerPolicy.model_validate(json.loads(args.policy))
    out = Path(args.out).open("a") if args.out else None  # noqa: SIM115
    side = None if args.mode == "pace" else redis.Redis.from_url(args.url, socket_timeout=10)
    breaker = FleetBreaker(
        **_parts(settings, policy),
        listeners=[Observer(side, args.namespace, args.worker, out)],
        guard=StoreGuard(name=args.worker, fail_max=2, reset_timeout_s=0.5),
    )
    if args.mode == "pace":
        assert args.stop_file and out is not None
        _pace(breaker, out, Path(args.stop_file))
    else:
        assert side is not None
        run = {
            "fail": lambda: _loop(breaker, side, args.namespace, OutcomeClass.FAILURE),
            "succeed": lambda: _loop(breaker, side, args.namespace, OutcomeClass.SUCCESS),
            "hold_probe": lambda: _hold_probe(breaker, side, args.namespace),
            "old_gen": lambda: _old_gen(breaker, side, args.namespace),
        }[args.mode]
        run()
    breaker.close()
    print(f"worker {args.worker} pid {os.getpid()} done", file=sys.stderr)


def _parts(settings: FleetSettings, policy: BreakerPolicy) -> dict[str, Any]:
    client = make_redis(settings)
    return {
        "store": RedisStore(client, namespace=settings.namespace),
        "policy_for": lambda _scope: policy,
        "fallback": settings.breaker_fallback,
        "worker_id": settings.worker_id,
        "events": EventLog(client, namespace=settings.namespace, maxlen=settings.events_maxlen),
    }


if __name__ == "__main__":
    main()
