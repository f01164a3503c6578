"""What a protected call costs: Redis round trips the caller waits on, and added latency.

    PYTHONPATH=. .venv/bin/python -m bench.breaker_overhead [--calls 5000] [--rounds 5]
        [--provider-ms 1]

Compares, in the same run and on the same private redis-server: a bare Redis PING (the floor
of any shared decision), agent-fleet's FleetBreaker on RedisStore (provider + model scopes in
one acquire), and pybreaker with CircuitRedisStorage (one scope), on successful and on failing
calls. Rounds interleave the contenders so machine noise hits them alike. Prints ratios
against PING.

Tight loop (default, the headline): the "provider call" is a no-op, so the time measured is
the breaker's own, and any background work (agent-fleet's coalesced success records) competes
with the caller for Redis and the GIL. ``--provider-ms N``: the provider sleeps N ms, as a
real call would wait on the network; a "no breaker" contender makes that sleep alone, and the
added latency is each contender's p50 minus its p50. "bg rt/call" counts the round trips other
threads (agent-fleet's sender) made per successful call.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pybreaker
import redis

from bench._common import (
    CountingConnection,
    cpu_note,
    redis_server,
    summary_us,
    thread_round_trips,
)
from breaker_service.breaker import FleetBreaker, Permit
from breaker_service.outcomes import Outcome, OutcomeClass
from breaker_service.policy import BreakerPolicy
from breaker_service.scope import Scope
from breaker_service.store.redis import RedisStore

# Thresholds out of reach: the benchmark measures the closed path, never a trip.
NEVER_TRIPS = BreakerPolicy(
    failure_rate_threshold=1.0,
    minimum_calls=10**9,
    consecutive_failures=10**9,
    slow_call_ms=10**9,
)
SCOPES = [Scope("bench"), Scope("bench", "model-a")]


class Contender:
    """One way of protecting a call; ``call(failing)`` makes one protected call."""

    def __init__(
        self,
        name: str,
        call: Callable[[bool], None],
        close: Callable[[], None],
        sent: list[int] | None = None,
    ) -> None:
        self.name = name
        self.call = call
        self.close = close
        self.sent = sent or [0]  # requests sent on this contender's client, by any thread
        self.samples: dict[bool, list[float]] = {False: [], True: []}
        self.round_trips: dict[bool, list[int]] = {False: [], True: []}

    def background_per_success(self, sent_at_start: int) -> float:
        """Requests other threads sent, per successful call (after close flushed them)."""
        caller = sum(sum(v) for v in self.round_trips.values())
        return (self.sent[0] - sent_at_start - caller) / max(1, len(self.samples[False]))


def counting_client(url: str, sent: list[int]) -> redis.Redis:
    """A client counting requests per thread (bench._common) and in total into ``sent``."""
    lock = threading.Lock()

    class Counting(CountingConnection):
        def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            with lock:
                sent[0] += 1
            super().send_packed_command(command, check_health)

    pool = redis.ConnectionPool.from_url(url, connection_class=Counting)
    return redis.Redis(connection_pool=pool)


def provider(ms: float) -> Callable[[], None]:
    """The protected "provider call": nothing, or a sleep standing for a network wait."""
    if ms <= 0:
        return lambda: None
    seconds = ms / 1000
    return lambda: time.sleep(seconds)


def bare_contender(provider_ms: float) -> Contender:
    """The provider call alone (real mode's baseline)."""
    work = provider(provider_ms)

    def call(_failing: bool) -> None:
        work()

    return Contender("no breaker (provider only)", call, lambda: None)


def ping_contender(url: str, provider_ms: float) -> Contender:
    sent = [0]
    client = counting_client(url, sent)
    work = provider(provider_ms)

    def call(_failing: bool) -> None:
        client.ping()
        work()

    return Contender("redis PING (floor)", call, client.close, sent)


def fleet_contender(url: str, provider_ms: float) -> Contender:
    sent = [0]
    client = counting_client(url, sent)
    breaker = FleetBreaker(
        RedisStore(client, namespace="bench"), lambda _s: NEVER_TRIPS, worker_id="bench"
    )
    work = provider(provider_ms)
    ok = Outcome(OutcomeClass.SUCCESS, latency_ms=0.1)
    failed = Outcome(OutcomeClass.FAILURE, latency_ms=0.1)

    def call(failing: bool) -> None:
        permit = breaker.acquire(SCOPES)
        assert isinstance(permit, Permit), permit
        work()
        breaker.record(permit, failed if failing else ok)

    return Contender("agent-fleet (2 scopes)", call, breaker.close, sent)


def pybreaker_contender(url: str, provider_ms: float) -> Contender:
    sent = [0]
    client = counting_client(url, sent)
    storage = pybreaker.CircuitRedisStorage(pybreaker.STATE_CLOSED, client, namespace="bench-pb")
    cb = pybreaker.CircuitBreaker(fail_max=10**9, reset_timeout=1, state_storage=storage)
    work = provider(provider_ms)

    def ok() -> None:
        work()

    def boom() -> None:
        work()
        raise ValueError("provider failed")

    def call(failing: bool) -> None:
        try:
            cb.call(boom if failing else ok)
        except ValueError:
            pass

    return Contender("pybreaker + CircuitRedisStorage", call, client.close, sent)


def run(calls: int, rounds: int, provider_ms: float = 0.0) -> dict[str, object]:
    """Measure every contender, interleaved over ``rounds``; return the figures."""
    with redis_server() as url:
        contenders = [
            ping_contender(url, provider_ms),
            fleet_contender(url, provider_ms),
            pybreaker_contender(url, provider_ms),
        ]
        if provider_ms > 0:
            contenders.append(bare_contender(provider_ms))
        per_round = max(1, calls // rounds)
        for c in contenders:  # warm up connections and script caches
            for failing in (False, True):
                for _ in range(50):
                    c.call(failing)
        fleet = contenders[1]
        fleet.close()  # sends the warm-up's pending records...
        fleet = contenders[1] = fleet_contender(url, provider_ms)  # ...then starts afresh
        for _ in range(50):
            fleet.call(False)
        sent_at_start = {c.name: c.sent[0] for c in contenders}
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
        background = {c.name: c.background_per_success(sent_at_start[c.name]) for c in contenders}
        # The records the fleet breaker took off the caller's path must all have landed.
        check = redis.Redis.from_url(url)
        snap = RedisStore(check, namespace="bench").snapshot(SCOPES[1], NEVER_TRIPS)
        check.close()
    return report(contenders, snap.calls, background, provider_ms)


def report(
    contenders: list[Contender],
    fleet_calls_in_window: int,
    background: dict[str, float],
    provider_ms: float,
) -> dict[str, object]:
    """Print the table and return the figures as a dict."""
    base = {f: 0.0 for f in (False, True)}
    if provider_ms > 0:  # real mode: subtract the provider's own time
        base = {f: summary_us(contenders[-1].samples[f])["p50_us"] for f in (False, True)}
    added = {
        (c.name, f): summary_us(c.samples[f])["p50_us"] - base[f]
        for c in contenders
        for f in (False, True)
    }
    floor = {f: added[(contenders[0].name, f)] for f in (False, True)}
    rows: dict[str, object] = {"provider_ms": provider_ms}
    mode = f"provider sleeps {provider_ms} ms" if provider_ms > 0 else "tight loop, no-op provider"
    print(f"breaker_overhead  ({mode}; {cpu_note()})")
    print(
        f"{'contender':34} {'call':8} {'rt/call':>8} {'bg rt':>6} {'p50 us':>9} {'p99 us':>9} "
        f"{'added':>8} {'p50/PING':>9}"
    )
    for c in contenders:
        for failing in (False, True):
            s = summary_us(c.samples[failing])
            rt = max(c.round_trips[failing]) if c.round_trips[failing] else 0
            mean_rt = sum(c.round_trips[failing]) / max(1, len(c.round_trips[failing]))
            bg = 0.0 if failing else background[c.name]
            extra = added[(c.name, failing)]
            ratio = extra / floor[failing]
            kind = "failing" if failing else "success"
            print(
                f"{c.name:34} {kind:8} {mean_rt:8.2f} {bg:6.2f} {s['p50_us']:9.1f} "
                f"{s['p99_us']:9.1f} {extra:8.1f} {ratio:9.2f}"
            )
            rows[f"{c.name}/{kind}"] = {**s, "round_trips_mean": mean_rt, "round_trips_max": rt,
                                        "background_round_trips_per_call": bg,
                                        "added_p50_us": extra, "p50_vs_ping": ratio}  # fmt: skip
    fleet_ok = added[(contenders[1].name, False)]
    pyb_ok = added[(contenders[2].name, False)]
    print(f"agent-fleet vs pybreaker+Redis, success added p50: {fleet_ok / pyb_ok:.2f}x")
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
    parser.add_argument(
        "--provider-ms",
        type=float,
        default=0.0,
        help="the provider call sleeps this long (0: no-op, the tight-loop headline)",
    )
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args = parser.parse_args()
    figures = run(args.calls, args.rounds, args.provider_ms)
    if args.json:
        print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
