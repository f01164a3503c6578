"""The job sweeper: finds jobs whose message the broker lost and publishes them again.

Celery's Redis transport can lose a message: a worker killed between popping it (BRPOP) and
recording it as unacked takes it along (celery/kombu#305, celery/celery#4354); a hard time
limit acks the message of a job whose process it killed; a producer can die between writing
the job record and publishing. The job store is the authority, so the sweeper compares it
with what the broker still holds and re-dispatches what no one will ever deliver:

- a ``running`` job untouched for longer than the hard time limit plus ``sweep_grace_s``:
  no live delivery can be that old (prefork kills it at the hard limit), so it is dead;
- a ``queued`` job untouched for ``sweep_grace_s`` whose message is neither in a worker's
  hands (``unacked``) nor still waiting: every priority list of its queue is empty or
  already serves messages dispatched after it.

Re-dispatching is one compare-and-set on the record (state and ``updated_at_ms`` unchanged
since read) that takes a new dispatch number, then a publish. Workers ack any older message
of the job without running it, so a false alarm costs one extra message, never a second
run. A re-dispatched job is a new delivery: the redelivery cap still escalates a job that
keeps dying. Every worker runs a sweeper thread (:mod:`workers.sweep`); a lease in Redis
lets one of them sweep per interval. ``fleet jobs sweep`` runs one sweep by hand.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import redis

from fleet.dispatch import BrokerView
from fleet.errors import StateUnavailable
from fleet.jobs import AgentJob, JobClient
from fleet.jobstore import JobRecord, JobState
from fleet.settings import FleetSettings

log = logging.getLogger(__name__)

SweepReason = Literal["running_past_time_limit", "queued_message_lost"]


@dataclass(frozen=True)
class Redispatch:
    """One job the sweeper published again (or would, in a dry run)."""

    job_id: str
    state: str
    reason: SweepReason
    idle_s: float
    threshold_s: float
    dispatch: int | None


@dataclass
class SweepReport:
    """What one sweep looked at and did."""

    running_checked: int = 0
    queued_checked: int = 0
    queued_waiting: int = 0
    redispatched: list[Redispatch] = field(default_factory=list)
    changed_meanwhile: int = 0
    dry_run: bool = False

    def as_dict(self) -> dict[str, object]:
        """JSON-ready form (``fleet jobs sweep --json``)."""
        return {
            "dry_run": self.dry_run,
            "running_checked": self.running_checked,
            "queued_checked": self.queued_checked,
            "queued_waiting": self.queued_waiting,
            "changed_meanwhile": self.changed_meanwhile,
            "redispatched": [r.__dict__ for r in self.redispatched],
        }


def _still_waiting(record: JobRecord, heads: list[int | None]) -> bool:
    """True when some priority list of the job's queue may still hold its message."""
    return any(h is not None and (h < 0 or h <= record.dispatch) for h in heads)


class JobSweeper:
    """Sweeps one namespace. ``clock`` (epoch seconds) is injectable for tests.

    ``running_rule=False`` leaves running jobs alone: only a pool that enforces the hard time
    limit (prefork) makes "running longer than the limit" mean "dead".
    """

    def __init__(
        self,
        jobs: JobClient,
        broker: redis.Redis,
        *,
        clock: Callable[[], float] = time.time,
        batch: int = 500,
        running_rule: bool = True,
    ) -> None:
        self.settings: FleetSettings = jobs.settings
        self.jobs = jobs
        self.store = jobs.store
        self.broker = BrokerView(self.settings, broker)
        self.clock = clock
        self.batch = batch
        self.running_rule = running_rule

    @property
    def running_threshold_s(self) -> float:
        """A running job idle this long is dead: hard time limit plus the grace."""
        return self.settings.job_time_limit_s + self.settings.sweep_grace_s

    def try_lease(self, holder: str) -> bool:
        """Take the fleet-wide sweep lease for one interval; False when another holds it."""
        ttl_ms = max(int(self.settings.sweep_interval_s * 1000), 1000)
        key = self.settings.key("jobs", "sweep_lease")
        try:
            return bool(self.store.redis.set(key, holder, nx=True, px=ttl_ms))
        except redis.RedisError as exc:
            raise StateUnavailable(f"sweeper: cannot take the lease {key}: {exc}") from exc

    def _untouched(self, state: JobState, before_ms: int) -> list[JobRecord]:
        ids = self.store.untouched_since(state, before_ms, limit=self.batch)
        return self.store.get_many(ids)  # one pipelined read for the whole batch

    def sweep(self, *, dry_run: bool = False) -> SweepReport:
        """One pass over stale running and queued jobs; returns what it found and did."""
        now_s = self.clock()
        report = SweepReport(dry_run=dry_run)
        running_cut = int((now_s - self.running_threshold_s) * 1000)
        running = self._untouched("running", running_cut) if self.running_rule else []
        report.running_checked = len(running)
        for rec in running:
            self._redispatch(
                rec, "running_past_time_limit", self.running_threshold_s, now_s, report
            )

        queued_cut = int((now_s - self.settings.sweep_grace_s) * 1000)
        queued = self._untouched("queued", queued_cut)
        report.queued_checked = len(queued)
        if queued:
            held = self.broker.held_jobs()
            heads = self.broker.heads(r.queue for r in queued)
            for rec in queued:
                if rec.job_id in held or _still_waiting(rec, heads[rec.queue]):
                    report.queued_waiting += 1
                    continue
                self._redispatch(
                    rec, "queued_message_lost", self.settings.sweep_grace_s, now_s, report
                )
        return report

    def _redispatch(
        self,
        rec: JobRecord,
        reason: SweepReason,
        threshold_s: float,
        now_s: float,
        report: SweepReport,
    ) -> None:
        idle_s = round(now_s - rec.updated_at_ms / 1000, 3)
        dispatch: int | None = None
        if not report.dry_run:
            dispatch = self.store.redispatch(rec, now_ms=int(now_s * 1000), reason=reason)
            if not dispatch:
                report.changed_meanwhile += 1
                return
            self.jobs.publish(AgentJob.model_validate(rec.job), dispatch)
        report.redispatched.append(
            Redispatch(rec.job_id, rec.state, reason, idle_s, threshold_s, dispatch)
        )
        log.warning(
            "job re-dispatched by the sweeper job_id=%s state=%s reason=%s idle_s=%.1f "
            "threshold_s=%.1f dispatch=%s previous_dispatch=%s deliveries=%s dry_run=%s",
            rec.job_id,
            rec.state,
            reason,
            idle_s,
            threshold_s,
            dispatch,
            rec.dispatch,
            rec.deliveries,
            report.dry_run,
        )
