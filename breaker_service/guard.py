"""Guarding the breaker's own Redis connection with pybreaker.

When Redis hangs, every call would wait a full socket timeout. :class:`StoreGuard` counts
consecutive store errors; after ``fail_max`` of them it stops calling Redis for
``reset_timeout_s`` seconds (calls fail fast with StoreUnavailable), then lets exactly one
call try (one trial at a time across threads): success closes the guard, failure opens it
again.

pybreaker is used as the state machine only. Its ``CircuitBreaker.call`` holds one lock for
the whole guarded call, which would serialise every Redis call of a process behind one hung
socket; here the store call runs outside that lock and only its result is reported to
pybreaker.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import pybreaker
import redis

from breaker_service.errors import StoreUnavailable

T = TypeVar("T")
log = logging.getLogger(__name__)


class _GuardListener(pybreaker.CircuitBreakerListener):
    def __init__(self, guard: StoreGuard) -> None:
        self._guard = guard

    def state_change(self, cb: Any, old_state: Any, new_state: Any) -> None:
        self._guard._state_changed(getattr(old_state, "name", None), new_state.name)


def _report(exc: StoreUnavailable | None) -> None:
    if exc is not None:
        raise exc


class StoreGuard:
    """Stops calling an unavailable store for a while (pybreaker state machine).

    ``fail_max`` consecutive StoreUnavailable (or RedisError) results open the guard for
    ``reset_timeout_s``; then one trial call decides whether to close it.
    """

    def __init__(self, *, name: str, fail_max: int = 3, reset_timeout_s: float = 2.0) -> None:
        """Guard named ``name`` (for logs) with the given error count and pause."""
        if fail_max < 1:
            raise ValueError(f"fail_max must be >= 1 (got {fail_max})")
        if reset_timeout_s <= 0:
            raise ValueError(f"reset_timeout_s must be > 0 (got {reset_timeout_s})")
        self.name = name
        self.reset_timeout_s = reset_timeout_s
        self._opened_at = 0.0
        self._trial = threading.Lock()
        self._cb = pybreaker.CircuitBreaker(
            fail_max=fail_max,
            reset_timeout=reset_timeout_s,
            throw_new_error_on_trip=False,
            listeners=[_GuardListener(self)],
            name=name,
        )
        self.refused = 0
        """Calls refused without touching the store because the guard was open."""

    @property
    def state(self) -> str:
        """``closed``, ``open`` or ``half-open`` (pybreaker's names)."""
        return str(self._cb.current_state)

    def retry_after_s(self) -> float:
        """Seconds until the guard lets a trial call through (``reset_timeout_s`` if closed)."""
        if self.state == pybreaker.STATE_CLOSED:
            return self.reset_timeout_s
        left = self._opened_at + self.reset_timeout_s - time.monotonic()
        return max(0.05, left)

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` unless the guard is open; RedisError is raised as StoreUnavailable."""
        trial = False
        if self.state != pybreaker.STATE_CLOSED:
            elapsed = time.monotonic() - self._opened_at >= self.reset_timeout_s
            if not (elapsed and self._trial.acquire(blocking=False)):
                self.refused += 1
                raise StoreUnavailable(
                    f"store guard {self.name} is open: not calling Redis for another "
                    f"{self.retry_after_s():.2f}s"
                )
            trial = True
        try:
            try:
                result = fn(*args, **kwargs)
            except redis.RedisError as exc:
                raise StoreUnavailable(f"store {self.name} did not answer: {exc}") from exc
        except StoreUnavailable as exc:
            self._record(exc, trial=trial)
            raise
        else:
            self._record(None, trial=trial)
            return result
        finally:
            if trial:
                self._trial.release()

    def _record(self, exc: StoreUnavailable | None, *, trial: bool) -> None:
        if trial:  # the trial decides, whatever pybreaker's own wall-clock timer says
            if exc is None:
                self._cb.close()
            else:
                self._cb.open()
            return
        if exc is None and self._cb.fail_counter == 0:
            return  # closed and nothing to reset: skip pybreaker's lock on the hot path
        with contextlib.suppress(pybreaker.CircuitBreakerError, StoreUnavailable):
            self._cb.call(_report, exc)

    def _state_changed(self, old: str | None, new: str) -> None:
        if new == pybreaker.STATE_OPEN:
            self._opened_at = time.monotonic()
            log.warning(
                "store guard=%s opened: not calling Redis for reset_timeout_s=%s",
                self.name,
                self.reset_timeout_s,
            )
        elif new == pybreaker.STATE_CLOSED and old is not None:
            log.info("store guard=%s closed: Redis answers again", self.name)
