"""The background record sender of a FleetBreaker: successes leave the caller's path, never lost.

One daemon thread per breaker drains a bounded queue and sends each record to the shared store
(through the breaker's own record path, so a Redis outage reroutes it to the local store).
When the queue is full, ``offer`` returns False and the caller records synchronously instead
of dropping. ``flush``/``close`` wait for the queue to drain (the breaker calls ``close`` at
interpreter exit). After ``os.fork`` (Celery prefork) the child starts with an empty queue,
a fresh lock and no thread; the parent keeps sending its own pending records.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable

from breaker_service.outcomes import Outcome
from breaker_service.policy import BreakerPolicy
from breaker_service.store.base import ScopeGrant

log = logging.getLogger(__name__)

GrantPairs = list[tuple[ScopeGrant, BreakerPolicy]]
"""The grants of one permit with their scopes' policies, as the store's record takes them."""


class RecordSender:
    """One background thread that sends queued records (bounded queue, flushed on close).

    ``send(pairs, outcome)`` is called on the sender thread; its exceptions are logged.
    """

    def __init__(self, send: Callable[[GrantPairs, Outcome], None], *, maxsize: int) -> None:
        self._send = send
        self._maxsize = maxsize
        self._queue: deque[tuple[GrantPairs, Outcome]] = deque()
        self._cond = threading.Condition()
        self._busy = 0
        self._closed = False
        self._thread: threading.Thread | None = None
        os.register_at_fork(after_in_child=functools.partial(_after_fork, weakref.ref(self)))

    def _forked(self) -> None:
        """In a forked child (Celery prefork): no thread, fresh lock; the parent sends its own
        pending records."""
        self._cond = threading.Condition()
        self._queue.clear()
        self._busy = 0
        self._thread = None

    def offer(self, pairs: GrantPairs, outcome: Outcome) -> bool:
        """Queue a record; False when the queue is full or closed (record it yourself)."""
        with self._cond:
            if self._closed or len(self._queue) >= self._maxsize:
                return False
            self._queue.append((pairs, outcome))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="fleet-breaker-records", daemon=True
                )
                self._thread.start()
            self._cond.notify_all()
            return True

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return
                batch = list(self._queue)
                self._queue.clear()
                self._busy = len(batch)
            for pairs, outcome in batch:
                try:
                    self._send(pairs, outcome)
                except Exception:
                    log.exception("breaker background record failed outcome=%s", outcome.cls)
            with self._cond:
                self._busy = 0
                self._cond.notify_all()

    def flush(self, timeout_s: float) -> bool:
        """Wait until every queued record was sent; False if ``timeout_s`` passed first."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._queue or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self, timeout_s: float) -> bool:
        """Flush, then stop the thread. Later offers return False."""
        done = self.flush(timeout_s)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        return done

    @property
    def pending(self) -> int:
        """Records queued or being sent."""
        with self._cond:
            return len(self._queue) + self._busy


def _after_fork(ref: weakref.ref[RecordSender]) -> None:
    sender = ref()
    if sender is not None:
        sender._forked()
