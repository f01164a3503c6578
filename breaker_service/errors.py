"""Exceptions raised by ``breaker_service``.

The tree::

    BreakerError
    ├── PolicyError          a BreakerPolicy or scope is invalid (names the field and the fix)
    ├── BreakerOpen          raised by the context-manager form when a scope rejects the call
    └── StoreUnavailable     the shared store (Redis) did not answer; carries the driver error

``StoreUnavailable`` never reaches a caller of :meth:`FleetBreaker.acquire`: the breaker turns
it into its fallback mode (``local`` | ``fail_open`` | ``fail_closed``) and says so.
"""

from __future__ import annotations


class BreakerError(Exception):
    """Root of every exception raised by ``breaker_service``."""


class PolicyError(BreakerError, ValueError):
    """A breaker policy or scope is invalid."""


class BreakerOpen(BreakerError):
    """A breaker scope rejected the call.

    ``scope`` names the rejecting scope, ``reason`` why (``open``, ``forced_open``,
    ``half_open_full``, ``credential``, ``suspect_full``, ``store_unavailable``), and
    ``retry_after_s`` when to come back.
    """

    def __init__(self, scope: str, reason: str, retry_after_s: float) -> None:
        self.scope = scope
        self.reason = reason
        self.retry_after_s = retry_after_s
        super().__init__(
            f"breaker {scope} rejected the call ({reason}); retry in {retry_after_s:.2f}s"
        )


class StoreUnavailable(BreakerError):
    """The breaker store did not answer (Redis down, hung or refusing)."""
