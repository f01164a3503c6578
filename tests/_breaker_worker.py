"""A fleet worker process for tests/test_breaker_fleet.py: one FleetBreaker in its own process.

Run as ``python -m tests._breaker_worker --url URL --namespace NS --worker ID --mode MODE ...``
from the repository root. Modes:

- ``fail`` / ``succeed``: call the simulated provider at ``--provider`` and record what it
  answered (the test sets its mode) until the key ``<ns>:test:stop`` exists; probes are
  wrapped in an INCR/DECR gauge with a max.
- ``hold_probe``: acquire until a probe lease is granted, report it, then hang (to be killed).
- ``old_gen``: acquire once, report the generation, wait for ``<ns>:test:go``, record FAILURE.
- ``pace``: call the provider until the file ``--stop-file`` exists, writing every decision as
  a JSON line to ``--out`` (works while Redis is paused).

A rejected call goes to the simulated backup at ``--backup`` instead, as ``llm_call`` would.
Nothing sleeps: the providers' latency (real HTTP on 127.0.0.1) paces every loop.

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

import httpx
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


def call(url: str) -> OutcomeClass:
    """One chat completion on the simulated provider at ``url``: SUCCESS on HTTP 200."""
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    try:
        status = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=10).status_code
    except httpx.HTTPError:
        return OutcomeClass.FAILURE
    return OutcomeClass.SUCCESS if status == 200 else OutcomeClass.FAILURE


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


def _loop(breaker: FleetBreaker, side: redis.Redis, ns: str, provider: str, backup: str) -> None:
    stop = f"{ns}:test:stop"
    while not side.exists(stop):
        decision = breaker.acquire([SCOPE])
        if isinstance(decision, Rejection):
            side.hincrby(f"{ns}:test:rejects", decision.reason, 1)
            call(backup)
            continue
        probe = decision.decision == "probe"
        if probe:
            side.eval(GAUGE_UP, 2, f"{ns}:test:gauge", f"{ns}:test:gauge_max")
            side.incr(f"{ns}:test:probes")
        started = time.monotonic()
        outcome = call(provider)
        if probe:
            side.decr(f"{ns}:test:gauge")
        latency_ms = (time.monotonic() - started) * 1000
        breaker.record(decision, Outcome(outcome, latency_ms=latency_ms))


def _hold_probe(breaker: FleetBreaker, side: redis.Redis, ns: str, backup: str) -> None:
    while True:
        decision = breaker.acquire([SCOPE])
        if isinstance(decision, Permit) and decision.decision == "probe":
            side.rpush(f"{ns}:test:holding", json.dumps([g.generation for g in decision.grants]))
            threading.Event().wait()  # hang with the lease until SIGKILL
        call(backup)


def _old_gen(breaker: FleetBreaker, side: redis.Redis, ns: str) -> None:
    decision = breaker.acquire([SCOPE])
    assert isinstance(decision, Permit), decision
    side.rpush(
        f"{ns}:test:acquired", json.dumps([decision.decision, decision.grants[0].generation])
    )
    side.blpop([f"{ns}:test:go"], timeout=60)
    breaker.record(decision, Outcome(OutcomeClass.FAILURE, latency_ms=1.0))
    side.rpush(f"{ns}:test:done", "1")


def _pace(breaker: FleetBreaker, out: Any, stop_file: Path, provider: str, backup: str) -> None:
    while not stop_file.exists():
        started = time.monotonic()
        row: dict[str, Any]
        try:
            decision = breaker.acquire([SCOPE])
        except Exception as exc:  # the test asserts that this never happens
            decision, row = None, {"d": "error", "error": repr(exc)}
        breaker_s = time.monotonic() - started
        if isinstance(decision, Permit):
            row = {"d": decision.decision}
            outcome = call(provider)
            started = time.monotonic()
            try:
                breaker.record(decision, Outcome(outcome, latency_ms=1.0))
            except Exception as exc:  # the test asserts that this never happens
                row = {"d": "error", "error": repr(exc)}
            breaker_s += time.monotonic() - started
        elif isinstance(decision, Rejection):
            row = {"d": "reject", "reason": decision.reason}
            call(backup)
        row["ms"] = round(breaker_s * 1000, 1)  # acquire + record, not the provider call
        out.write(json.dumps(row) + "\n")
        out.flush()


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
    ap.add_argument("--provider", help="base URL of the simulated provider")
    ap.add_argument("--backup", help="base URL of the simulated backup (rejected calls)")
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
        _pace(breaker, out, Path(args.stop_file), args.provider, args.backup)
    else:
        assert side is not None
        run = {
            "fail": lambda: _loop(breaker, side, args.namespace, args.provider, args.backup),
            "succeed": lambda: _loop(breaker, side, args.namespace, args.provider, args.backup),
            "hold_probe": lambda: _hold_probe(breaker, side, args.namespace, args.backup),
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
