"""Dispatch numbers in Celery task ids, and a read-only view of what the Redis broker holds.

A job's message has the task id ``<job id>.<dispatch>`` (see :mod:`fleet.jobstore`). The
sweeper (:mod:`fleet.sweeper`) reads the broker's own keys to tell "still waiting somewhere"
from "lost": kombu's Redis transport keeps each queue in lists (one per priority step, with
``\\x06\\x16<step>`` suffixes), consumers pop from the right end, and a popped message sits in
the ``unacked`` hash until it is acked. Nothing here writes to the broker.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from typing import Any, cast

import redis

from fleet.errors import StateUnavailable
from fleet.settings import FleetSettings

log = logging.getLogger(__name__)

# kombu.transport.redis: Channel.sep and the default priority steps (PRIORITY_STEPS).
PRIORITY_SEP = "\x06\x16"
PRIORITY_STEPS = (0, 3, 6, 9)


def task_id(job_id: str, dispatch: int) -> str:
    """The Celery task id of dispatch ``dispatch`` of ``job_id``."""
    return f"{job_id}.{dispatch}"


def parse_task_id(value: str | None) -> tuple[str | None, int | None]:
    """``(job_id, dispatch)`` from a task id; ``(None, None)`` when it is not one of ours."""
    job_id, dot, number = (value or "").rpartition(".")
    if not dot or not number.isdigit() or len(job_id) != 32:
        return None, None
    return job_id, int(number)


def broker_prefix(settings: FleetSettings) -> str:
    """The ``global_keyprefix`` of the fleet's broker keys: ``<ns>:celery:``."""
    return f"{settings.namespace}:celery:"


def _message_task_id(raw: bytes) -> str | None:
    """The task id in a kombu message (a queue element or an ``unacked`` value)."""
    try:
        data: Any = json.loads(raw)
    except ValueError:
        return None
    if isinstance(data, list) and data:  # unacked values are [payload, exchange, routing key]
        data = data[0]
    headers = data.get("headers") if isinstance(data, dict) else None
    task = headers.get("id") if isinstance(headers, dict) else None
    return task if isinstance(task, str) else None


class BrokerView:
    """What the broker holds for the fleet's queues, read with a few cheap commands."""

    def __init__(self, settings: FleetSettings, broker: redis.Redis) -> None:
        self.settings = settings
        self.redis = broker
        self.prefix = broker_prefix(settings)

    def queue_lists(self, queue: str) -> list[str]:
        """The broker list keys of ``queue``, one per priority step."""
        base = self.prefix + queue
        return [base if step == 0 else f"{base}{PRIORITY_SEP}{step}" for step in PRIORITY_STEPS]

    def held_jobs(self) -> set[str]:
        """Job ids of messages popped by a worker and not acked yet (``unacked``).

        This hash holds only in-flight messages (prefetched, running or waiting for an ETA),
        so reading it whole stays cheap.
        """
        try:
            values = cast("list[bytes]", self.redis.hvals(self.prefix + "unacked"))
        except redis.RedisError as exc:
            raise StateUnavailable(f"broker: cannot read unacked messages: {exc}") from exc
        held = set()
        for raw in values:
            job_id, _ = parse_task_id(_message_task_id(raw))
            if job_id:
                held.add(job_id)
        return held

    def heads(self, queues: Iterable[str]) -> dict[str, list[int | None]]:
        """For each queue, the dispatch number of the next message of each priority list.

        ``None`` for an empty list, ``-1`` for a head that is not a fleet job message.
        """
        names = sorted(set(queues))
        try:
            pipe = self.redis.pipeline(transaction=False)
            for q in names:
                for key in self.queue_lists(q):
                    pipe.lindex(key, -1)
            raw = pipe.execute()
        except redis.RedisError as exc:
            raise StateUnavailable(f"broker: cannot read the queue heads: {exc}") from exc
        out: dict[str, list[int | None]] = {}
        steps = len(PRIORITY_STEPS)
        for i, q in enumerate(names):
            heads: list[int | None] = []
            for item in raw[i * steps : (i + 1) * steps]:
                if item is None:
                    heads.append(None)
                    continue
                _, dispatch = parse_task_id(_message_task_id(item))
                heads.append(-1 if dispatch is None else dispatch)
            out[q] = heads
        return out
