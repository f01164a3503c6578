"""Breaker listeners: hooks called when a FleetBreaker changes state, rejects, or loses Redis.

Subclass :class:`BreakerListener` and override only the hooks you need; every hook does
nothing by default (the pybreaker ``CircuitBreakerListener`` pattern). Hooks run on the thread
that caused the event (a caller's thread, or the breaker's background record sender), so keep
them short and thread-safe. An exception raised by a hook is logged and swallowed: a listener
bug never fails the protected call.

:class:`LoggingListener` is an example that logs every hook at INFO/WARNING.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from breaker_service.breaker import Rejection
    from breaker_service.store.base import Transition

TransitionSource = Literal["shared", "local"]
"""``shared``: decided by the fleet-wide store (Redis); ``local``: by the degraded local store."""


class BreakerListener:
    """Base class of breaker listeners: every hook is a no-op until overridden."""

    def on_transition(self, transition: Transition, *, source: TransitionSource) -> None:
        """A scope changed state because of this process's call (told to exactly one process).

        ``source`` is ``local`` when the transition happened in the per-process fallback store
        while Redis was unavailable.
        """

    def on_reject(self, rejection: Rejection) -> None:
        """``acquire`` refused a call (open, half-open full, forced open, store unavailable)."""

    def on_store_unavailable(self, error: BaseException, *, fallback: str) -> None:
        """The shared store stopped answering; the breaker now decides per ``fallback``."""

    def on_store_recovered(self, *, degraded_s: float) -> None:
        """The shared store answers again after ``degraded_s`` seconds; shared state rules."""


class LoggingListener(BreakerListener):
    """Logs every hook as one structured line on ``logger`` (default ``breaker_service``)."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        """Log to ``logger`` or to the ``breaker_service.listeners`` logger."""
        self._log = logger or logging.getLogger("breaker_service.listeners")

    def on_transition(self, transition: Transition, *, source: TransitionSource) -> None:
        """Log ``breaker=<scope> from=.. to=.. trigger=.. threshold=.. value=..``."""
        self._log.info(
            "breaker=%s from=%s to=%s trigger=%s threshold=%s value=%s generation=%d source=%s",
            transition.scope,
            transition.from_state,
            transition.to_state,
            transition.trigger,
            transition.threshold,
            transition.value,
            transition.generation,
            source,
        )

    def on_reject(self, rejection: Rejection) -> None:
        """Log ``breaker=<scope> rejected reason=.. retry_after_s=..``."""
        self._log.info(
            "breaker=%s rejected reason=%s retry_after_s=%.3f",
            rejection.scope,
            rejection.reason,
            rejection.retry_after_s,
        )

    def on_store_unavailable(self, error: BaseException, *, fallback: str) -> None:
        """Log that the breaker lost Redis and which fallback now decides."""
        self._log.warning("breaker store unavailable fallback=%s error=%s", fallback, error)

    def on_store_recovered(self, *, degraded_s: float) -> None:
        """Log that the breaker rejoined the shared state."""
        self._log.info("breaker store recovered degraded_s=%.3f", degraded_s)
