"""Conservation under crashes: 500 two-step jobs while worker processes are SIGKILLed at
random moments and restarted. Every job reaches exactly one terminal state, none is lost, and
no completed step is paid twice (simulated provider request counts vs stored steps)."""

from __future__ import annotations

import contextlib
import os
import random
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet.escalation import EscalationQueue
from fleet.stepcache import steps_key
from fleet.testing import wait_until
from fleet.testing.celery_workers import CeleryWorkers
from tests.test_workers_e2e import Fleet, make_fleet

pytestmark = [pytest.mark.docker, pytest.mark.slow]

JOBS = 500
CONCURRENCY = 2
SEED = int(os.environ.get("FLEET_TEST_CONSERVATION_SEED", "20261123"))


@pytest.fixture
def crash_fleet(tmp_path: Path, redis_url: str, celery_workers: CeleryWorkers) -> Iterator[Fleet]:
    """Short visibility timeout (60 s, the minimum) and time limits (each job takes
    milliseconds), and a sweeper every second with a 5 s grace: a killed delivery comes back
    after 15 s, and a SIGKILL right after BRPOP, which loses the message in kombu's Redis
    transport (about one run in two), is recovered only by the sweeper."""
    yield from make_fleet(
        tmp_path,
        redis_url,
        celery_workers,
        FLEET_VISIBILITY_TIMEOUT_S="60",
        FLEET_JOB_SOFT_TIME_LIMIT_S="5",
        FLEET_JOB_TIME_LIMIT_S="10",
        FLEET_SWEEP_INTERVAL_S="1",
        FLEET_SWEEP_GRACE_S="5",
    )


def _ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def _kill_pool_process(fleet: Fleet) -> bool:
    """SIGKILL the pool process running some job, if it is a child of one of our workers."""
    ours = {w.proc.pid for w in fleet.workers.workers if w.proc.poll() is None}
    for record in fleet.jobs.store.list("running", limit=20):
        pid = int((record.worker or ":0").rsplit(":", 1)[1])
        if pid and _ppid(pid) in ours:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                return True
    return False


def _terminal(fleet: Fleet) -> int:
    counts = fleet.jobs.store.counts()
    return sum(v for k, v in counts.items() if k != "submitted")


@pytest.mark.timeout(900)
def test_every_job_ends_exactly_once_under_sigkill(crash_fleet: Fleet) -> None:
    fleet = crash_fleet
    rng = random.Random(SEED)
    fleet.workers.concurrency = CONCURRENCY
    fleet.workers.start(2)
    ids = [fleet.jobs.submit("research.brief", {"topic": f"t{i}"}).job_id for i in range(JOBS)]

    group_kills = child_kills = 0
    target = 0
    while group_kills + child_kills < 10:
        target += rng.randint(15, 50)
        if target >= JOBS - 20:
            break
        wait_until(lambda t=target: _terminal(fleet) >= t, timeout_s=240, interval_s=0.05)
        if rng.random() < 0.6:
            index = rng.randrange(len(fleet.workers.workers))
            fleet.workers.kill(index)  # SIGKILL the worker and its pool: messages stay unacked
            group_kills += 1
            fleet.workers.restart(index)
        elif _kill_pool_process(fleet):  # the parent requeues at once (reject_on_worker_lost)
            child_kills += 1

    # killed deliveries come back after the hard limit + grace (sweeper) or the visibility
    # timeout (kombu), whichever is first: 15 s or 60 s, plus the backlog
    records = fleet.wait_all(ids, timeout_s=480)

    # exactly one terminal state per job, none lost, counters and indexes agree
    states = [r.state for r in records]
    counts = fleet.jobs.store.counts()
    sizes = fleet.jobs.store.state_sizes()
    assert counts["submitted"] == JOBS
    assert sum(v for k, v in counts.items() if k != "submitted") == JOBS
    for state in ("succeeded", "escalated", "failed", "cancelled"):
        assert counts[state] == states.count(state) == sizes[state], state
    assert sizes["queued"] == sizes["running"] == 0
    escalated = EscalationQueue(fleet.settings, fleet.jobs.redis).count(status="all")
    assert escalated == counts["escalated"]
    assert counts["failed"] == 0

    # no completed step paid twice: every request beyond the stored steps is a call that
    # was in flight when its process was killed (at most CONCURRENCY per worker kill)
    r = fleet.jobs.redis
    steps = sum(int(r.hlen(steps_key(fleet.settings, i))) for i in ids)
    succeeded = states.count("succeeded")
    assert steps >= 2 * succeeded
    requests = fleet.requests()
    in_flight_bound = group_kills * CONCURRENCY + child_kills
    assert steps <= requests <= steps + in_flight_bound
    assert group_kills + child_kills >= 3
    print(
        f"\nconservation seed={SEED} jobs={JOBS} succeeded={succeeded} "
        f"escalated={counts['escalated']} failed={counts['failed']} "
        f"group_kills={group_kills} child_kills={child_kills} steps={steps} "
        f"requests={requests} repaid_in_flight={requests - steps} "
        f"redelivered_jobs={sum(1 for x in records if x.deliveries > 1)} "
        f"redispatched_by_sweeper={sum(x.redispatches for x in records)} "
        f"sweep_reasons={dict(Counter(x.sweep_reason for x in records if x.sweep_reason))}"
    )
