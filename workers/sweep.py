"""The job sweeper inside every worker: a bootstep that runs :class:`~fleet.sweeper.JobSweeper`
in a thread of the worker's main process, every ``FLEET_SWEEP_INTERVAL_S`` seconds.

Every worker runs one; a Redis lease lets one of them sweep per interval, so the fleet sweeps
about once per interval whatever its size. ``FLEET_SWEEP_INTERVAL_S=0`` turns it off. Under a
pool other than prefork the hard time limit is not enforced, so only lost *queued* jobs are
re-dispatched there (a warning says so).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import redis
from celery import Celery, bootsteps
from celery.concurrency.prefork import TaskPool as PreforkPool
from kombu.exceptions import OperationalError

from fleet.errors import FleetError
from fleet.jobs import JobClient
from fleet.redis_client import make_redis
from fleet.settings import FleetSettings
from fleet.sweeper import JobSweeper

log = logging.getLogger(__name__)


class SweeperThread:
    """Sweeps every ``settings.sweep_interval_s`` until :meth:`stop`; survives Redis outages."""

    def __init__(self, settings: FleetSettings, app: Celery, *, running_rule: bool) -> None:
        self.settings = settings
        self.app = app
        self.running_rule = running_rule
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread (daemon: it never holds the worker up at shutdown)."""
        self._thread = threading.Thread(target=self._run, name="fleet-job-sweeper", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to end and wait for its current sweep to finish."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        settings = self.settings
        broker = make_redis(settings, url=settings.effective_broker_url)
        try:
            jobs = JobClient(settings, app=self.app)
        except Exception:
            log.exception(
                "job sweeper not started worker=%s: fix the error above and restart the worker",
                settings.worker_id,
            )
            broker.close()
            return
        sweeper = JobSweeper(jobs, broker, running_rule=self.running_rule)
        log.info(
            "job sweeper started worker=%s interval_s=%s grace_s=%s running_threshold_s=%s "
            "running_rule=%s",
            settings.worker_id,
            settings.sweep_interval_s,
            settings.sweep_grace_s,
            sweeper.running_threshold_s,
            self.running_rule,
        )
        try:
            while not self._stop.wait(settings.sweep_interval_s):
                self._once(sweeper)
        finally:
            jobs.close()
            broker.close()

    def _once(self, sweeper: JobSweeper) -> None:
        try:
            if not sweeper.try_lease(self.settings.worker_id):
                return
            report = sweeper.sweep()
        except (FleetError, redis.RedisError, OperationalError) as exc:
            log.warning("job sweep skipped worker=%s error=%s", self.settings.worker_id, exc)
            return
        except Exception:
            log.exception("job sweep failed worker=%s", self.settings.worker_id)
            return
        if report.redispatched or report.changed_meanwhile:
            log.warning(
                "job sweep worker=%s redispatched=%s running_checked=%s queued_checked=%s "
                "queued_waiting=%s changed_meanwhile=%s",
                self.settings.worker_id,
                len(report.redispatched),
                report.running_checked,
                report.queued_checked,
                report.queued_waiting,
                report.changed_meanwhile,
            )


def sweeper_step(settings: FleetSettings) -> type[bootsteps.StartStopStep]:
    """A worker bootstep class that runs a :class:`SweeperThread` for ``settings``."""

    class JobSweeperStep(bootsteps.StartStopStep):
        """Runs the fleet's job sweeper in the worker's main process."""

        requires = ("celery.worker.components:Pool",)
        label = "fleet job sweeper"

        def include_if(self, parent: Any) -> bool:
            return settings.sweep_interval_s > 0

        def start(self, parent: Any) -> None:
            pool_cls = parent.pool_cls
            prefork = isinstance(pool_cls, type) and issubclass(pool_cls, PreforkPool)
            if not prefork:
                log.warning(
                    "job sweeper: pool %s does not enforce the hard time limit; running jobs "
                    "will not be re-dispatched, only lost queued ones",
                    getattr(pool_cls, "__name__", pool_cls),
                )
            self.thread = SweeperThread(settings, parent.app, running_rule=prefork)
            self.thread.start()

        def stop(self, parent: Any) -> None:
            thread: SweeperThread | None = getattr(self, "thread", None)
            if thread is not None:
                thread.stop()

        terminate = stop

    return JobSweeperStep
