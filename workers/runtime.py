"""What a worker process holds while running jobs (built once per pool process)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import redis

from fleet.jobs import JobClient
from fleet.settings import FleetSettings

if TYPE_CHECKING:
    from fleet.escalation import EscalationQueue
    from fleet.registry import Registry, TaskProfile


@dataclass
class WorkerRuntime:
    """Settings, Redis client, job client (store, catalog, producer) and the registry."""

    settings: FleetSettings
    redis: redis.Redis
    jobs: JobClient
    registry: Registry
    _escalations: EscalationQueue | None = field(default=None, repr=False)

    def profile(self, task_type: str) -> TaskProfile:
        """The registry task profile (failure policy, fallback output...) of ``task_type``."""
        return self.registry.task(task_type)

    @property
    def escalations(self) -> EscalationQueue:
        """The durable escalation queue (built on first use)."""
        if self._escalations is None:
            from fleet.escalation import EscalationQueue  # noqa: PLC0415 - first use only

            self._escalations = EscalationQueue(self.settings, self.redis)
        return self._escalations
