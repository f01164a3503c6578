"""The Celery app factory: ``create_app(settings)`` with the job-protecting settings.

``celery -A workers.app worker`` works without a module-level app built at import time: Celery
looks up the module attribute ``app``, and this module's ``__getattr__`` builds it on first
access from ``FleetSettings.load()`` (the ``FLEET_*`` environment). Settings (DESIGN.md §4):

- JSON only (pickle refused), results ignored (job state lives in :mod:`fleet.jobstore`);
- ``acks_late`` + ``reject_on_worker_lost``: a job whose worker dies is redelivered, and our
  own per-job delivery counter (:mod:`workers.redelivery`) escalates it past the cap;
- prefetch 1; one visibility timeout (``FLEET_VISIBILITY_TIMEOUT_S``) for broker and results;
  soft/hard time limits below it;
- queues ``agents`` (default) and ``escalation``; broker keys prefixed ``<ns>:celery:``;
- a job sweeper in every worker (:mod:`workers.sweep`) re-dispatches jobs the broker lost.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu import Exchange, Queue

from fleet.dispatch import broker_prefix
from fleet.settings import FleetSettings
from workers.catalog import AGENTS_QUEUE, ESCALATION_QUEUE
from workers.sweep import sweeper_step
from workers.tasks import register_tasks

RESTORE_INTERVAL_S = 5
QUEUES = (AGENTS_QUEUE, ESCALATION_QUEUE)


def transport_options(settings: FleetSettings) -> dict[str, Any]:
    """Kombu Redis transport options shared by every process of a fleet."""
    return {
        "visibility_timeout": settings.visibility_timeout_s,
        "global_keyprefix": broker_prefix(settings),  # the sweeper reads these keys too
        # Sweep for messages of dead workers every RESTORE_INTERVAL_S (kombu's default
        # throttle would make it 10x longer).
        "unacked_restore_interval": RESTORE_INTERVAL_S,
        "unacked_restore_throttle": 1,
    }


def create_app(settings: FleetSettings | None = None) -> Celery:
    """Build the fleet's Celery app for ``settings`` (default: ``FleetSettings.load()``).

    Registers ``fleet.run_agent_job`` and, in prefork children, installs a ``FleetClient``
    with the step cache as the process's default ``llm_call`` client.
    """
    settings = settings or FleetSettings.load()
    app = Celery("agent-fleet", set_as_current=False)
    options = transport_options(settings)
    app.conf.update(
        broker_url=settings.effective_broker_url,
        broker_transport_options=options,
        result_backend=None,
        result_backend_transport_options=options,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        event_serializer="json",
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        task_soft_time_limit=settings.job_soft_time_limit_s,
        task_time_limit=settings.job_time_limit_s,
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
        task_default_queue=AGENTS_QUEUE,
        task_queues=tuple(Queue(q, Exchange(q), routing_key=q) for q in QUEUES),
        task_default_exchange=AGENTS_QUEUE,
        task_default_routing_key=AGENTS_QUEUE,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        enable_utc=True,
    )
    register_tasks(app, settings)
    app.steps["worker"].add(sweeper_step(settings))
    return app


_lazy: list[Celery] = []


def __getattr__(name: str) -> Celery:
    """``workers.app.app`` (what ``celery -A workers.app`` loads): built on first access."""
    if name not in ("app", "celery"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if not _lazy:
        _lazy.append(create_app(FleetSettings.load()))
    return _lazy[0]
