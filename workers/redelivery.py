"""Our own redelivery cap: Redis keeps no delivery count, so each job start INCRs one.

``<ns>:job:<id>:deliveries`` counts the deliveries of a job since it was last (re)queued on
purpose. Past ``1 + settings.max_redeliveries`` deliveries (the first plus the redeliveries
after crashes or lost workers) the job is escalated with reason ``redelivery_cap``.
"""

from __future__ import annotations

import redis

from fleet.errors import StateUnavailable
from fleet.settings import FleetSettings


def deliveries_key(settings: FleetSettings, job_id: str) -> str:
    """``<ns>:job:<id>:deliveries``."""
    return settings.key("job", job_id, "deliveries")


def count_delivery(settings: FleetSettings, redis_client: redis.Redis, job_id: str) -> int:
    """Count one more delivery of ``job_id`` and return the count (1 for the first)."""
    key = deliveries_key(settings, job_id)
    try:
        pipe = redis_client.pipeline(transaction=True)
        pipe.incr(key)
        pipe.expire(key, settings.visibility_timeout_s * 4)
        count, _ = pipe.execute()
    except redis.RedisError as exc:
        raise StateUnavailable(f"cannot count delivery of job {job_id}: {exc}") from exc
    return int(count)


def reset_deliveries(settings: FleetSettings, redis_client: redis.Redis, job_id: str) -> None:
    """Give ``job_id`` a fresh delivery budget (retry_later, requeue from escalation)."""
    try:
        redis_client.delete(deliveries_key(settings, job_id))
    except redis.RedisError as exc:
        raise StateUnavailable(f"cannot reset deliveries of job {job_id}: {exc}") from exc


def over_cap(settings: FleetSettings, delivery: int) -> bool:
    """True when ``delivery`` exceeds the first delivery plus ``max_redeliveries``."""
    return delivery > 1 + settings.max_redeliveries
