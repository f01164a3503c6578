"""Manual, fleet-wide breaker control, audited in the event stream.

Operators isolate a provider (``force_open``), pin it closed (``force_closed``), switch its
breaker to metrics only (``disable``) or start it over (``reset``). The change is made in the
shared store, so every worker sees it on its next acquire, and it is appended to the event
stream with the ``actor`` who did it and the ``reason`` they gave. A forced or disabled state
never expires on its own: only another control action changes it.
"""

from __future__ import annotations

import getpass
import logging
import socket
from collections.abc import Callable

from breaker_service.errors import PolicyError
from breaker_service.events import BreakerEvent, EventLog
from breaker_service.policy import BreakerPolicy
from breaker_service.scope import Scope
from breaker_service.store.base import (
    BreakerStore,
    ControlAction,
    Transition,
    check_control_action,
)

log = logging.getLogger(__name__)


def default_actor() -> str:
    """``user@host`` of this process: who ran the control action."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


class BreakerControl:
    """Apply operator actions to the shared store and audit them in ``events``."""

    def __init__(
        self,
        store: BreakerStore,
        events: EventLog,
        policy_for: Callable[[Scope], BreakerPolicy],
        *,
        worker_id: str,
    ) -> None:
        """Control ``store``, audit to ``events``; ``worker_id`` names this process."""
        self._store = store
        self._events = events
        self._policy_for = policy_for
        self._worker_id = worker_id

    def apply(
        self, scope: Scope, action: ControlAction, *, reason: str, actor: str | None = None
    ) -> Transition:
        """Apply ``action`` to ``scope`` fleet-wide and append the audit event.

        ``reason`` is required (PolicyError when blank); ``actor`` defaults to ``user@host``.
        Raises StoreUnavailable when Redis does not answer (nothing was changed, or the
        change was made but the audit event could not be written: the message says which).
        """
        check_control_action(action)
        if not reason or not reason.strip():
            raise PolicyError("reason is required: say why (e.g. --reason 'provider incident 42')")
        who = actor or default_actor()
        transition = self._store.control(scope, self._policy_for(scope), action)
        event = BreakerEvent.from_transition(
            transition, worker=self._worker_id, actor=who, reason=reason.strip()
        )
        self._events.append(event)
        log.info(
            "breaker=%s manual action=%s from=%s to=%s generation=%d actor=%s reason=%s",
            scope,
            action,
            transition.from_state,
            transition.to_state,
            transition.generation,
            who,
            reason.strip(),
        )
        return transition

    def force_open(self, scope: Scope, *, reason: str, actor: str | None = None) -> Transition:
        """Isolate ``scope``: every acquire rejects (``forced_open``) until changed."""
        return self.apply(scope, "force_open", reason=reason, actor=actor)

    def force_closed(self, scope: Scope, *, reason: str, actor: str | None = None) -> Transition:
        """Pin ``scope`` closed: calls are allowed and counted, it never trips."""
        return self.apply(scope, "force_closed", reason=reason, actor=actor)

    def disable(self, scope: Scope, *, reason: str, actor: str | None = None) -> Transition:
        """Metrics only: calls are allowed and counted, the breaker never decides."""
        return self.apply(scope, "disable", reason=reason, actor=actor)

    def reset(self, scope: Scope, *, reason: str, actor: str | None = None) -> Transition:
        """Back to closed with a fresh window and no trip history."""
        return self.apply(scope, "reset", reason=reason, actor=actor)
