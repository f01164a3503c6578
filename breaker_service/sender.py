"""The background success sender of a FleetBreaker: successes leave the caller's path, coalesced,
never lost.

A successful ``allow`` call only merges into an aggregate kept per grant set (same scopes, same
generations and ``fail_seq``, no probe): ``{count, slow calls per scope, last latency}``. One
daemon thread per breaker wakes when the first success is pending, waits ``linger_s`` (more
successes merge meanwhile), then sends every aggregate in one store call (a Redis pipeline: one
round trip per flush, one script call per grant set, whatever the number of calls). While a flush
is in flight, new successes merge into the next aggregates.

Order: :meth:`take` hands the pending aggregates of some scopes to a synchronous record (a
failure, a probe) after waiting for an in-flight flush that touches them, so the caller sends
them in the same round trip *before* its own record; a failure is never overtaken by an older
success (which would reset the consecutive-failure counter wrongly).

Never lost: when the number of distinct pending grant sets reaches ``maxsize``, ``add`` returns
False and the caller records synchronously. ``flush``/``close`` wake the thread at once and
wait for everything to be sent (the breaker calls ``close`` at interpreter exit). After
``os.fork`` (Celery prefork) the child starts with nothing pending, a fresh lock and no
thread; the parent keeps sending its own pending successes.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Collection

from breaker_service.outcomes import Outcome, OutcomeClass
from breaker_service.policy import BreakerPolicy
from breaker_service.scope import Scope
from breaker_service.store.base import RecordItem, ScopeGrant

log = logging.getLogger(__name__)

GrantPairs = list[tuple[ScopeGrant, BreakerPolicy]]
"""The grants of one permit with their scopes' policies, as the store's record takes them."""


class _Aggregate:
    """Successes of one grant set not yet sent."""

    __slots__ = ("count", "latency_ms", "pairs", "scopes", "slow")

    def __init__(self, pairs: GrantPairs) -> None:
        self.pairs = tuple(pairs)
        self.scopes = frozenset(g.scope for g, _ in pairs)
        self.count = 0
        self.slow = [0] * len(pairs)
        self.latency_ms = 0.0

    def add(self, latency_ms: float) -> None:
        self.count += 1
        self.latency_ms = latency_ms
        for i, (_, policy) in enumerate(self.pairs):
            if latency_ms > policy.slow_call_ms:
                self.slow[i] += 1

    def item(self) -> RecordItem:
        """The store record standing for all these successes."""
        return RecordItem(
            self.pairs,
            Outcome(OutcomeClass.SUCCESS, self.latency_ms),
            count=self.count,
            slow=tuple(self.slow),
        )


class RecordSender:
    """One background thread that sends coalesced success records (flushed on close).

    ``send(items)`` is called on the sender thread with the records of one flush (in one round
    trip); its exceptions are logged. ``policies(grants)`` pairs a grant set with its policies
    (called once per new aggregate, on the caller's thread).
    """

    def __init__(
        self,
        send: Callable[[list[RecordItem]], None],
        policies: Callable[[tuple[ScopeGrant, ...]], GrantPairs],
        *,
        maxsize: int,
        linger_s: float = 0.02,
    ) -> None:
        """Build a sender; ``maxsize`` bounds the distinct pending grant sets, ``linger_s``
        is how long the thread lets successes gather before a flush (0: flush at once)."""
        if linger_s < 0:
            raise ValueError(f"linger_s must be >= 0 (got {linger_s}); 0 flushes at once")
        self._send = send
        self._policies = policies
        self._maxsize = maxsize
        self._linger_s = linger_s
        self._pending: dict[tuple[ScopeGrant, ...], _Aggregate] = {}
        self._calls = 0  # successes pending (not in flight)
        self._cond = threading.Condition(threading.Lock())
        self._inflight: list[_Aggregate] = []
        self._busy = 0  # successes in flight
        self._urgent = 0  # callers waiting in flush/close: skip the linger
        self._closed = False
        self._thread: threading.Thread | None = None
        os.register_at_fork(after_in_child=functools.partial(_after_fork, weakref.ref(self)))

    def _forked(self) -> None:
        """In a forked child (Celery prefork): no thread, fresh lock; the parent sends its own
        pending records."""
        self._cond = threading.Condition(threading.Lock())
        self._pending = {}
        self._calls = 0
        self._inflight = []
        self._busy = 0
        self._urgent = 0
        self._thread = None

    def add(self, grants: tuple[ScopeGrant, ...], latency_ms: float) -> bool:
        """Merge one successful call into its grant set's aggregate; False when full or
        closed (record it yourself)."""
        with self._cond:
            agg = self._pending.get(grants)
            if agg is None:
                if self._closed or len(self._pending) >= self._maxsize:
                    return False
                agg = self._pending[grants] = _Aggregate(self._policies(grants))
            agg.add(latency_ms)
            self._calls += 1
            if self._calls == 1:  # the first pending success wakes the thread
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="fleet-breaker-records", daemon=True
                    )
                    self._thread.start()
                self._cond.notify_all()
            return True

    def take(self, scopes: Collection[Scope], timeout_s: float = 5.0) -> list[RecordItem]:
        """Remove and return the pending aggregates touching ``scopes``, once no in-flight
        flush touches them (so the caller's record lands after them). On the sender thread
        itself (a listener recording from inside a send) it does not wait for its own send."""
        deadline = time.monotonic() + timeout_s
        own = threading.current_thread() is self._thread  # a listener called back from a send
        with self._cond:
            while not own and any(not agg.scopes.isdisjoint(scopes) for agg in self._inflight):
                left = deadline - time.monotonic()
                if left <= 0:
                    log.warning("breaker record waited timeout_s=%s for a flush", timeout_s)
                    break
                self._cond.wait(left)
            taken = [k for k, agg in self._pending.items() if not agg.scopes.isdisjoint(scopes)]
            items = []
            for key in taken:
                agg = self._pending.pop(key)
                self._calls -= agg.count
                items.append(agg.item())
            return items

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if self._pending and self._linger_s and not (self._urgent or self._closed):
                    self._cond.wait(self._linger_s)  # successes gather; flush/close cut it
                if not self._pending:
                    if self._closed:
                        return
                    continue
                batch = list(self._pending.values())
                self._pending = {}
                self._inflight = batch
                self._busy, self._calls = self._calls, 0
            try:
                self._send([agg.item() for agg in batch])
            except Exception:
                log.exception(
                    "breaker background record failed outcome=success calls=%d",
                    sum(a.count for a in batch),
                )
            with self._cond:
                self._inflight = []
                self._busy = 0
                self._cond.notify_all()

    def flush(self, timeout_s: float) -> bool:
        """Send every pending success now and wait; False if ``timeout_s`` passed first."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            self._urgent += 1
            self._cond.notify_all()
            try:
                while self._pending or self._busy:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    self._cond.wait(left)
            finally:
                self._urgent -= 1
        return True

    def close(self, timeout_s: float) -> bool:
        """Flush, then stop the thread. Later adds return False."""
        done = self.flush(timeout_s)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        return done

    @property
    def pending(self) -> int:
        """Successful calls pending or being sent."""
        with self._cond:
            return self._calls + self._busy


def _after_fork(ref: weakref.ref[RecordSender]) -> None:
    sender = ref()
    if sender is not None:
        sender._forked()
