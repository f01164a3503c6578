"""What a protected call costs: Redis round trips the caller waits on, and added latency.

    .venv/bin/python -m bench.breaker_overhead [--calls 5000] [--rounds 5]

Compares, in the same run and on the same private redis-server: a bare Redis PING (the floor
of any shared decision), agent-fleet's FleetBreaker on RedisStore (provider + model scopes in
one acquire), and pybreaker with CircuitRedisStorage (one scope), on successful and on failing
calls. The "provider call" is a no-op, so the time measured is the breaker's own. Rounds
interleave the contenders so machine noise hits them alike. Prints ratios against PING.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import pybreaker
from breaker_service.breaker import FleetBreaker, Permit
from breaker_service.store.redis import RedisStore

from bench._common import counting_client, cpu_note, redis_server, summary_us, thread_round_trips
from breaker_service.outcomes import Outcome, OutcomeClass
from breaker_service.policy import BreakerPolicy
from breaker_service.scope import Scope

# Thresholds out of reach: the benchmark measures the closed path, never a trip.
NEVER_TRIPS = BreakerPolicy(
    failure_rate_threshold=1.0,
    minimum_calls=10**9,
    consecutive_failures=10**9,
    slow_call_ms=10**9,
)
SCOPES = [Scope("bench"), Scope("bench", "model-a")]


class Contender:
    """One way of protecting a call; ``call(failing)`` makes one protected no-op call."""

    def __init__(self, name: str, call: Callable[[bool], None], close: Callable[[], None]) -> None:
        self.name = name
        self.call = call
        self.close = close
        self.samples: dict[bool, list[float]] = {False: [], True: []}
        self.round_trips: dict[bool, list[int]] = {False: [], True: []}


def ping_contender(url: str) -> Contender:
    client = counting_client(url)

    def call(_failing: bool) -> None:
        client.ping()

    return Contender("redis PING (floor)", call, client.close)


def fleet_contender(url: str) -> Contender:
    client = counting_client(url)
    breaker = FleetBreaker(
        RedisStore(client, namespace="bench"), lambda _s: NEVER_TRIPS, worker_id="bench"
    )

    def call(failing: bool) -> None:
        permit = breaker.acquire(SCOPES)
        assert isinstance(permit, Permit), permit
        cls = OutcomeClass.FAILURE if failing else OutcomeClass.SUCCESS
        breaker.record(permit, Outcome(cls, latency_ms=0.1))

    return Contender("agent-fleet (2 scopes)", call, breaker.close)


def pybreaker_contender(url: str) -> Contender:
    client = counting_client(url)
    storage = pybreaker.CircuitRedisStorage(pybreaker.STATE_CLOSED, client, namespace="bench-pb")
    cb = pybreaker.CircuitBreaker(fail_max=10**9, reset_timeout=1, state_storage=storage)

    def ok() -> None:
        return None

    def boom() -> None:
        raise ValueError("provider failed")

    def call(failing: bool) -> None:
        try:
            cb.call(boom if failing else ok)
        except ValueError:
            pass

    return Contender("pybreaker + CircuitRedisStorage", call, client.close)


def run(calls: int, rounds: int) -> dict[str, object]:
    """Measure every contender, interleaved over ``rounds``; return the figures."""
    with redis_server() as url:
        contenders = [ping_contender(url), fleet_contender(url), pybreaker_contender(url)]
        per_round = max(1, calls // rounds)
        for c in contenders:  # warm up connections and script caches
            for failing in (False, True):
                for _ in range(50):
                    c.call(failing)
        for _ in range(rounds):
            for failing in (False, True):
                for c in contenders:
                    for _ in range(per_round):
                        rt0 = thread_round_trips()
                        t0 = time.perf_counter()
                        c.call(failing)
                        c.samples[failing].append(time.perf_counter() - t0)
                        c.round_trips[failing].append(thread_round_trips() - rt0)
        for c in contenders:
            c.close()
        # The records the fleet breaker took off the caller's path must all have landed.
        check = counting_client(url)
        snap = RedisStore(check, namespace="bench").snapshot(SCOPES[1], NEVER_TRIPS)
    return report(contenders, snap.calls)


def report(contenders: list[Contender], fleet_calls_in_window: int) -> dict[str, object]:
    """Print the table and return the figures as a dict."""
    floor = {f: summary_us(contenders[0].samples[f])["p50_us"] for f in (False, True)}
    rows: dict[str, object] = {}
    print(f"breaker_overhead  ({cpu_note()})")
    print(f"{'contender':34} {'call':8} {'rt/call':>8} {'p50 us':>9} {'p99 us':>9} {'p50/PING':>9}")
    for c in contenders:
        for failing in (False, True):
            s = summary_us(c.samples[failing])
            rt = max(c.round_trips[failing]) if c.round_trips[failing] else 0
            mean_rt = sum(c.round_trips[failing]) / max(1, len(c.round_trips[failing]))
            ratio = s["p50_us"] / floor[failing]
            kind = "failing" if failing else "success"
            print(
                f"{c.name:34} {kind:8} {mean_rt:8.2f} {s['p50_us']:9.1f} {s['p99_us']:9.1f} "
                f"{ratio:9.2f}"
            )
            rows[f"{c.name}/{kind}"] = {**s, "round_trips_mean": mean_rt, "round_trips_max": rt,
                                        "p50_vs_ping": ratio}  # fmt: skip
    fleet_ok = summary_us(contenders[1].samples[False])["p50_us"]
    pyb_ok = summary_us(contenders[2].samples[False])["p50_us"]
    print(f"agent-fleet vs pybreaker+Redis, success p50: {fleet_ok / pyb_ok:.2f}x")
    print(f"fleet model-scope calls counted in the window (background records landed): "
          f"{fleet_calls_in_window}")  # fmt: skip
    rows["fleet_vs_pybreaker_success_p50"] = fleet_ok / pyb_ok
    rows["fleet_calls_in_window"] = fleet_calls_in_window
    return rows


def main() -> None:
    """Parse flags, run, print the table (and JSON with --json)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000, help="calls per contender and kind")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args = parser.parse_args()
    figures = run(args.calls, args.rounds)
    if args.json:
        print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
