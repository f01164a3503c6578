"""Jobs/s of the whole path (submit -> Celery worker -> agent -> llm_call -> simulated provider
-> job record) with 1 and then 2 worker processes, on the ``local`` preset.

    .venv/bin/python -m bench.jobs_throughput --jobs 300 --concurrency 1

Each run: a fresh namespace; the workers are started and ready first, then N
``research.research`` jobs (one llm_call each) are submitted and the clock runs until the last
job is terminal. Timings on a
shared 2-core VM are noisy: compare the two rows of the same run (the ratio), not absolutes.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bench._common import cpu_note, redis_server
from fleet.jobs import JobClient
from fleet.local import write_local_registry
from fleet.providers.simulated import SimulatedProvider
from fleet.settings import FleetSettings
from fleet.testing.celery_workers import CeleryWorkers
from fleet.testing.wait import wait_until


def run(redis_url: str, registry: Path, workers_n: int, jobs_n: int, concurrency: int) -> float:
    """Jobs/s for ``jobs_n`` jobs on ``workers_n`` worker processes."""
    namespace = f"bench{workers_n}x{concurrency}t{int(time.time())}"
    env = {
        "FLEET_REDIS_URL": redis_url,
        "FLEET_NAMESPACE": namespace,
        "FLEET_REGISTRY_PATH": str(registry),
    }
    settings = FleetSettings.load(redis_url=redis_url, namespace=namespace, registry_path=registry)
    workers = CeleryWorkers(env=env, queues="agents", concurrency=concurrency)
    try:
        workers.start(workers_n)
        with JobClient(settings) as jobs:
            started = time.perf_counter()
            ids = [
                jobs.submit("research.research", {"topic": f"t{i}"}).job_id for i in range(jobs_n)
            ]

            def settled() -> bool:
                counts = jobs.store.counts()
                return sum(v for k, v in counts.items() if k != "submitted") >= jobs_n

            wait_until(settled, timeout_s=600, interval_s=0.02, message="all jobs terminal")
            elapsed = time.perf_counter() - started
            bad = [i for i in ids if jobs.store.state(i) != "succeeded"]
            if bad:
                raise SystemExit(f"{len(bad)} jobs did not succeed, e.g. {bad[0]}")
        return jobs_n / elapsed
    finally:
        workers.stop()


def main() -> None:
    """Parse flags, run 1 then 2 worker processes, print jobs/s and the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=300, help="Jobs per run.")
    parser.add_argument("--concurrency", type=int, default=1, help="Pool size per worker.")
    args = parser.parse_args()
    with (
        redis_server() as redis_url,
        SimulatedProvider(port=0, control_port=0, name="sim-primary") as primary,
        SimulatedProvider(port=0, control_port=0, name="sim-backup") as backup,
        tempfile.TemporaryDirectory() as tmp,
    ):
        registry = write_local_registry(
            Path(tmp) / "registry.toml", primary_port=primary.port, backup_port=backup.port
        )
        rates = {n: run(redis_url, registry, n, args.jobs, args.concurrency) for n in (1, 2)}
    print(cpu_note())
    for n, rate in rates.items():
        print(f"{n} worker process(es) x concurrency {args.concurrency}: {rate:7.1f} jobs/s")
    print(f"ratio 2/1: {rates[2] / rates[1]:.2f}")


if __name__ == "__main__":
    main()
