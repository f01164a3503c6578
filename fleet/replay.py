"""Auto-replay: when a breaker closes again, requeue the escalations it caused.

Register an :class:`AutoReplayListener` on the worker's ``FleetBreaker``::

    queue = EscalationQueue(settings, client, auto_replay_enabled=registry_auto_replay(registry))
    breaker = FleetBreaker.from_settings(settings, client, policy_for,
                                         listeners=[AutoReplayListener(queue)])

A breaker transition is told to exactly one process (the one whose call caused it), so each
close triggers one replay pass fleet-wide. Only task types whose registry profile sets
``auto_replay = true`` are replayed (off by default), oldest first, each job at most once in
its life; see :meth:`fleet.escalation.EscalationQueue.auto_replay`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from breaker_service.listeners import BreakerListener, TransitionSource
from breaker_service.store.base import Transition
from fleet.errors import UnknownTaskType
from fleet.escalation import EscalationQueue
from fleet.registry import Registry

log = logging.getLogger(__name__)


def registry_auto_replay(registry: Registry) -> Callable[[str], bool]:
    """``task_type -> TaskProfile.auto_replay`` from ``registry`` (False for unknown types)."""

    def enabled(task_type: str) -> bool:
        try:
            return registry.task(task_type).auto_replay
        except UnknownTaskType:
            log.warning("auto-replay off for unknown task_type=%s", task_type)
            return False

    return enabled


class AutoReplayListener(BreakerListener):
    """Breaker listener that replays escalations when their breaker closes.

    On a transition to ``closed`` decided by the shared (Redis) store, it calls
    ``queue.auto_replay(str(scope))`` on the caller's thread. Closes decided by the local
    fallback store (Redis unavailable) are not fleet-wide and are ignored. Errors are logged,
    never raised: a failed replay leaves its entries open for the next close or an operator.
    """

    def __init__(self, queue: EscalationQueue) -> None:
        """Replay into ``queue`` (its ``auto_replay_enabled`` decides per task type)."""
        self._queue = queue

    def on_transition(self, transition: Transition, *, source: TransitionSource) -> None:
        """Requeue the open entries caused by ``transition.scope`` when it closes."""
        if transition.to_state != "closed":
            return
        scope = str(transition.scope)
        if source != "shared":
            log.info("auto-replay skipped breaker=%s: closed by the local fallback", scope)
            return
        try:
            replayed = self._queue.auto_replay(scope)
        except Exception:
            log.exception("auto-replay failed breaker=%s trigger=%s", scope, transition.trigger)
            return
        log.info(
            "auto-replay breaker=%s trigger=%s replayed=%d", scope, transition.trigger, replayed
        )
