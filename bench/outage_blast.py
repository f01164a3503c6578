"""How hard a fleet hits a dead provider: requests it receives after it starts failing.

    .venv/bin/python -m bench.outage_blast [--workers 1 4 8] [--threads 4] [--outage-s 6]

W worker processes (each with T threads) call a simulated provider over HTTP on 127.0.0.1 at
a fixed pace. At t0 the provider starts answering 503; for ``--outage-s`` seconds we count the
requests it receives, fleet-wide, for each contender, all with the same trip threshold
(5 consecutive failures) and a 1 s base open time:

- agent-fleet: one FleetBreaker per process, shared state in Redis (provider + model scopes);
- pybreaker per process (memory storage);
- pybreaker with CircuitRedisStorage (state shared in Redis, per-call reads and writes);
- no breaker;
- on request only (``--contenders ... agent-fleet-nocap``): agent-fleet with
  ``suspect_cap=False``, to see what the suspect cap saves in the same session.

Every contender offers the same load (one attempt per thread every ``--pace-ms``; a rejected
attempt costs a pace tick like a sent one). Prints counts and ratios.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx

from bench._common import cpu_note, redis_server
from fleet.providers.simulated import SimControl, SimulatedProvider
from fleet.testing.wait import free_port, wait_until

CONTENDERS = ("agent-fleet", "pybreaker-memory", "pybreaker-redis", "no-breaker")
EXTRA_CONTENDERS = ("agent-fleet-nocap",)
FAIL_MAX = 5
OPEN_S = 1.0


def _attempt_fn(
    kind: str, redis_url: str, provider_url: str, run_id: str
) -> Callable[[httpx.Client], None]:
    """Build, in the worker process, the function one thread calls per attempt."""

    def send(http: httpx.Client) -> None:
        response = http.post(
            provider_url,
            json={"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
        )
        if response.status_code >= 500:
            raise RuntimeError(f"HTTP {response.status_code}")

    if kind == "no-breaker":

        def call_plain(http: httpx.Client) -> None:
            try:
                send(http)
            except RuntimeError:
                pass

        return call_plain
    if kind.startswith("pybreaker"):
        import pybreaker
        import redis

        storage = None
        if kind == "pybreaker-redis":
            storage = pybreaker.CircuitRedisStorage(
                pybreaker.STATE_CLOSED, redis.Redis.from_url(redis_url), namespace=f"pb-{run_id}"
            )
        cb = pybreaker.CircuitBreaker(
            fail_max=FAIL_MAX, reset_timeout=OPEN_S, state_storage=storage,
            throw_new_error_on_trip=False,
        )  # fmt: skip

        def call_pybreaker(http: httpx.Client) -> None:
            try:
                cb.call(send, http)
            except (RuntimeError, pybreaker.CircuitBreakerError):
                pass

        return call_pybreaker
    return _fleet_attempt(redis_url, run_id, send, suspect_cap=kind != "agent-fleet-nocap")


def _fleet_attempt(
    redis_url: str, run_id: str, send: Callable[[httpx.Client], None], *, suspect_cap: bool
) -> Callable[[httpx.Client], None]:
    import redis

    from breaker_service.breaker import FleetBreaker, Rejection
    from breaker_service.outcomes import Outcome, OutcomeClass
    from breaker_service.policy import BreakerPolicy
    from breaker_service.scope import Scope
    from breaker_service.store.redis import RedisStore

    policy = BreakerPolicy(
        consecutive_failures=FAIL_MAX, failure_rate_threshold=0.5, minimum_calls=10,
        open_base_ms=int(OPEN_S * 1000), probe_lease_ms=2_000, half_open_max_probes=1,
        half_open_successes=2, suspect_cap=suspect_cap,
    )  # fmt: skip
    client = redis.Redis.from_url(redis_url, socket_timeout=0.5)
    breaker = FleetBreaker(
        RedisStore(client, namespace=f"blast-{run_id}"), lambda _s: policy, worker_id=run_id
    )
    scopes = [Scope("blast"), Scope("blast", "m")]

    def call_fleet(http: httpx.Client) -> None:
        permit = breaker.acquire(scopes)
        if isinstance(permit, Rejection):
            return
        started = time.monotonic()
        try:
            send(http)
        except RuntimeError:
            breaker.record(
                permit, Outcome(OutcomeClass.FAILURE, (time.monotonic() - started) * 1e3)
            )
        else:
            breaker.record(
                permit, Outcome(OutcomeClass.SUCCESS, (time.monotonic() - started) * 1e3)
            )

    return call_fleet


def worker_main(
    kind: str, redis_url: str, provider_url: str, run_id: str, threads: int, pace_s: float,
    ready: Any, stop: Any,
) -> None:  # fmt: skip
    """One worker process: T threads attempting a call every ``pace_s`` until ``stop``."""
    attempt = _attempt_fn(kind, redis_url, provider_url, run_id)

    def loop() -> None:
        with httpx.Client(timeout=httpx.Timeout(2.0, connect=0.5)) as http:
            next_at = time.monotonic()
            while not stop.is_set():
                try:
                    attempt(http)
                except httpx.HTTPError:
                    pass
                next_at += pace_s
                delay = next_at - time.monotonic()
                if delay > 0:
                    stop.wait(delay)
                else:
                    next_at = time.monotonic()

    pool = [threading.Thread(target=loop, daemon=True) for _ in range(threads)]
    for t in pool:
        t.start()
    ready.release()
    for t in pool:
        t.join()


def blast(kind: str, workers: int, threads: int, outage_s: float, pace_s: float,
          redis_url: str, port: int) -> tuple[int, int]:  # fmt: skip
    """Run one contender at one fleet size; return the requests received after t0, in all
    and in the first 0.5 s (calls already in flight when the provider died, plus the trip)."""
    ctx = mp.get_context("spawn")
    control = SimControl(port)
    control.set_mode("healthy")
    ready, stop = ctx.Semaphore(0), ctx.Event()
    run_id = f"{kind}-{workers}-{time.time_ns()}"
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    procs = [
        ctx.Process(
            target=worker_main, args=(kind, redis_url, url, run_id, threads, pace_s, ready, stop)
        )
        for _ in range(workers)
    ]
    for p in procs:
        p.start()
    for _ in procs:
        ready.acquire(timeout=120)
    time.sleep(0.5)  # healthy traffic first, so every contender starts closed and warm
    control.set_mode("down")
    control.reset_counts()
    time.sleep(0.5)
    burst = int(control.stats()["total_requests"])
    time.sleep(outage_s - 0.5)
    received = int(control.stats()["total_requests"])
    stop.set()
    for p in procs:
        p.join(timeout=30)
    return received, burst


def _table(title: str, runs: dict[str, dict[int, list[int]]], workers: list[int]) -> None:
    """Print one table of medians [min-max] and the ratios against agent-fleet."""
    median = {k: {w: statistics.median(v) for w, v in by_w.items()} for k, by_w in runs.items()}
    print(f"\n{title}")
    print(f"{'contender':20}" + "".join(f"{'W=' + str(w):>16}" for w in workers))
    for kind, by_w in runs.items():
        cells = "".join(
            f"{f'{median[kind][w]:g} [{min(by_w[w])}-{max(by_w[w])}]':>16}" for w in workers
        )
        print(f"{kind:20}{cells}")
    if "agent-fleet" in runs:
        for w in workers:
            ours = max(1.0, median["agent-fleet"][w])
            ratios = ", ".join(
                f"{kind} / agent-fleet = {median[kind][w] / ours:.1f}x"
                for kind in runs
                if kind != "agent-fleet"
            )
            print(f"  W={w}: {ratios}")


def main() -> None:
    """Run every contender at every fleet size and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--outage-s", type=float, default=6.0)
    parser.add_argument("--pace-ms", type=float, default=20.0)
    parser.add_argument("--repeat", type=int, default=3, help="runs per cell; the median is shown")
    parser.add_argument(
        "--contenders",
        nargs="+",
        default=list(CONTENDERS),
        choices=CONTENDERS + EXTRA_CONTENDERS,
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    port = free_port()
    kinds = [k for k in CONTENDERS + EXTRA_CONTENDERS if k in args.contenders]
    runs: dict[str, dict[int, list[int]]] = {k: {w: [] for w in args.workers} for k in kinds}
    later: dict[str, dict[int, list[int]]] = {k: {w: [] for w in args.workers} for k in kinds}
    with redis_server() as redis_url, SimulatedProvider(port=port, name="blast"):
        wait_until(lambda: SimControl(port).stats() is not None, message="sim provider")
        for _ in range(args.repeat):
            for w in args.workers:
                for kind in kinds:
                    n, burst = blast(kind, w, args.threads, args.outage_s, args.pace_ms / 1000,
                                     redis_url, port)  # fmt: skip
                    runs[kind][w].append(n)
                    later[kind][w].append(n - burst)
                    print(f"  {kind:18} W={w}: {n} requests after t0, {burst} in the first "
                          "0.5 s", flush=True)  # fmt: skip
    print(
        f"\noutage_blast: requests reaching a dead provider in {args.outage_s:.0f}s "
        f"(median of {args.repeat} runs, [min-max]), threads/process={args.threads}, "
        f"fail_max={FAIL_MAX}, open={OPEN_S}s, pace={args.pace_ms:g}ms ({cpu_note()})"
    )
    _table("all requests after t0", runs, args.workers)
    _table("after the first 0.5 s (half-open periods; not the calls in flight at t0)", later,
           args.workers)  # fmt: skip
    if args.json:
        print(json.dumps({"all": runs, "after_first_0.5s": later}, indent=2))


if __name__ == "__main__":
    main()
