"""FleetBreaker: the fleet-wide circuit breaker a worker consults around every provider call.

``acquire(scopes)`` asks the shared store (one Redis round trip, all scopes at once) and
returns a :class:`Permit` or a :class:`Rejection`; ``record(permit, outcome)`` reports how the
call went; ``protect(scopes)`` wraps both around a ``with`` block.

Round trips: a successful ALLOW call waits on the acquire only. Its SUCCESS merges into a
per-grant-set aggregate that one background sender thread per breaker sends every
``success_linger_ms`` as one record per grant set (:mod:`breaker_service.sender`; never
dropped: when too many grant sets are pending the caller records synchronously; ``close()``
and interpreter exit flush it). Failures, and every outcome of a half-open probe, are recorded
synchronously, together with the pending successes of the same scopes in the same round trip
(a pipeline, successes first, so a failure is never overtaken by an older success): a failing
call costs two round trips and a probe result is never delayed. An IGNORED outcome of an
``allow`` permit changes nothing in the store, so it is not sent. A permit that holds a
suspect lease (its scope had failures in a row when it was admitted) is recorded
synchronously whatever the outcome, IGNORED included: the lease blocks admissions until freed.

Transitions the store returns are announced exactly once, by this process: one event in the
stream (:mod:`breaker_service.events`), one structured log line, and the listeners'
``on_transition``.

Redis unavailable: store calls go through a :class:`~breaker_service.guard.StoreGuard`. While
the store does not answer, ``fallback`` decides: ``local`` uses a per-process
:class:`~breaker_service.store.memory.MemoryStore` with the same policies (decision
``degraded``), ``fail_open`` allows (decision ``bypass``), ``fail_closed`` rejects (reason
``store_unavailable``). Records that cannot reach Redis go to the local store. Entering and
leaving that mode is logged and told to listeners; rejoining appends a ``store_recovered``
event. No RedisError or StoreUnavailable ever leaves ``acquire``, ``record`` or ``protect``.
"""

from __future__ import annotations

import atexit
import functools
import logging
import random
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import redis

from breaker_service.errors import BreakerOpen, StoreUnavailable
from breaker_service.events import BreakerEvent, EventLog
from breaker_service.guard import StoreGuard
from breaker_service.listeners import BreakerListener, TransitionSource
from breaker_service.outcomes import Outcome, OutcomeClass
from breaker_service.policy import BreakerPolicy
from breaker_service.scope import Scope
from breaker_service.sender import GrantPairs, RecordSender
from breaker_service.store.base import (
    AcquireResult,
    BreakerStore,
    RecordItem,
    ScopeGrant,
    ScopeSnapshot,
)
from breaker_service.store.memory import MemoryStore
from breaker_service.store.redis import RedisStore

if TYPE_CHECKING:
    from breaker_service.store.base import Transition
    from fleet.settings import FleetSettings

log = logging.getLogger(__name__)

Decision = Literal["allow", "probe", "degraded", "bypass"]
Fallback = Literal["local", "fail_open", "fail_closed"]


@dataclass(frozen=True)
class Permit:
    """Permission to make one call; hand it back to :meth:`FleetBreaker.record`.

    ``decision``: ``allow`` (shared store, closed), ``probe`` (this call holds a half-open
    probe lease: record it promptly), ``degraded`` (decided by the local fallback store while
    Redis is unavailable), ``bypass`` (Redis unavailable and ``fallback="fail_open"``; its
    grants carry generation -1, so recording it counts metrics in the local store only).

    A scope an operator disabled answers ``allow`` (the store's acquire does not report the
    state); its outcomes are recorded as metrics only by the store.

    An ``allow`` permit of a *suspect* scope (closed, with consecutive failures, see
    :mod:`breaker_service.store.base`) holds a suspect lease (:attr:`holds_lease`): its
    outcome is recorded synchronously, never coalesced, because the lease blocks admissions
    until it is freed.
    """

    grants: tuple[ScopeGrant, ...]
    decision: Decision

    @property
    def holds_lease(self) -> bool:
        """True when a grant holds a suspect lease (the outcome is recorded at once)."""
        return any(g.lease_token is not None for g in self.grants)


@dataclass(frozen=True)
class Rejection:
    """The call must not be made. Come back after ``retry_after_s`` seconds.

    ``reason``: ``open``, ``half_open_full``, ``forced_open``, ``credential``,
    ``suspect_full`` (the scope has failures in a row and enough calls in flight to trip it:
    retry within 250 ms) or ``store_unavailable`` (Redis unavailable and
    ``fallback="fail_closed"``).
    """

    scope: str
    reason: str
    retry_after_s: float


def _close_at_exit(ref: weakref.ref[FleetBreaker]) -> None:
    breaker = ref()
    if breaker is not None:
        breaker.close()


class FleetBreaker:
    """The fleet-wide breaker of one process. Thread-safe; build one per process and share it.

    ``policy_for`` maps each scope to its policy (registry defaults <- provider <- model).
    ``worker_id`` names this process in events. ``events`` is where transitions are announced
    (None: log and listeners only). ``local_store`` is the fallback store (default a new
    MemoryStore). ``guard`` protects the Redis connection (default: 3 errors, 2 s pause).
    ``queue_max`` bounds the distinct grant sets with pending successes; ``success_linger_ms``
    is how long successes gather before the background flush (0: flush at once). Longer
    lingers send fewer records (less Redis and GIL time next to callers) but show successes
    in the shared window that much later; a failure or probe of the same scopes carries
    them along at once.
    """

    def __init__(
        self,
        store: BreakerStore,
        policy_for: Callable[[Scope], BreakerPolicy],
        *,
        fallback: Fallback = "local",
        worker_id: str,
        events: EventLog | None = None,
        listeners: Sequence[BreakerListener] = (),
        local_store: BreakerStore | None = None,
        guard: StoreGuard | None = None,
        queue_max: int = 1000,
        success_linger_ms: float = 20.0,
    ) -> None:
        """Build a breaker on ``store``; see the class docstring for the arguments."""
        if fallback not in ("local", "fail_open", "fail_closed"):
            raise ValueError(
                f"fallback={fallback!r} is invalid: use 'local', 'fail_open' or 'fail_closed' "
                "(FLEET_BREAKER_FALLBACK)"
            )
        if not success_linger_ms >= 0:
            raise ValueError(
                f"success_linger_ms={success_linger_ms!r} is invalid: use a number >= 0 "
                "(0 sends each success at once; default 20.0)"
            )
        self._store = store
        self._policy_for = policy_for
        self.fallback: Fallback = fallback
        self.worker_id = worker_id
        self._events = events
        self._listeners = tuple(listeners)
        self._local = local_store if local_store is not None else MemoryStore()
        self.guard = guard or StoreGuard(name=f"breaker-store:{worker_id}")
        self._sender = RecordSender(
            self._record_shared, self._pairs, maxsize=queue_max, linger_s=success_linger_ms / 1000
        )
        self._lock = threading.Lock()
        self._degraded_since: float | None = None
        self._rng = random.Random()
        self._closed = False
        self._atexit = functools.partial(_close_at_exit, weakref.ref(self))
        atexit.register(self._atexit)

    @classmethod
    def from_settings(
        cls,
        settings: FleetSettings,
        client: redis.Redis,
        policy_for: Callable[[Scope], BreakerPolicy],
        listeners: Sequence[BreakerListener] = (),
    ) -> FleetBreaker:
        """A breaker on the Redis store of ``client`` with the events stream, fallback mode and
        worker id from ``settings`` (``FLEET_NAMESPACE``, ``FLEET_BREAKER_FALLBACK``...)."""
        return cls(
            RedisStore(client, namespace=settings.namespace),
            policy_for,
            fallback=settings.breaker_fallback,
            worker_id=settings.worker_id,
            events=EventLog(client, namespace=settings.namespace, maxlen=settings.events_maxlen),
            listeners=listeners,
        )

    # -- acquire -------------------------------------------------------------------------

    def acquire(self, scopes: Sequence[Scope]) -> Permit | Rejection:
        """Ask every scope at once; a Permit to call, or a Rejection saying when to retry.

        Never raises RedisError/StoreUnavailable: while Redis is unavailable the fallback mode
        decides. A bad ``scopes`` argument raises ValueError naming the fix.
        """
        if not scopes:
            raise ValueError("acquire() needs at least one Scope, e.g. [Scope('sambanova')]")
        pairs = [(scope, self._policy_for(scope)) for scope in scopes]
        try:
            result, transitions = self.guard.call(self._store.acquire, pairs)
        except StoreUnavailable as exc:
            return self._acquire_degraded(pairs, exc)
        self._rejoined()
        self._announce(transitions, source="shared")
        return self._answer(result, shared=True)

    def _acquire_degraded(
        self, pairs: list[tuple[Scope, BreakerPolicy]], exc: StoreUnavailable
    ) -> Permit | Rejection:
        self._enter_degraded(exc)
        if self.fallback == "fail_open":
            return Permit(tuple(ScopeGrant(s, -1) for s, _ in pairs), "bypass")
        if self.fallback == "fail_closed":
            rejection = Rejection(str(pairs[0][0]), "store_unavailable", self.guard.retry_after_s())
            self._notify("on_reject", rejection)
            return rejection
        result, transitions = self._local.acquire(pairs)
        self._announce(transitions, source="local")
        return self._answer(result, shared=False)

    def _answer(self, result: AcquireResult, *, shared: bool) -> Permit | Rejection:
        if result.allowed:
            if not shared:
                return Permit(result.grants, "degraded")
            probe = any(g.probe_token is not None for g in result.grants)
            return Permit(result.grants, "probe" if probe else "allow")
        rejection = Rejection(
            str(result.rejected_scope), result.reason or "open", result.retry_after_ms / 1000
        )
        self._notify("on_reject", rejection)
        return rejection

    # -- record --------------------------------------------------------------------------

    def record(self, permit: Permit, outcome: Outcome) -> None:
        """Report how the permitted call went. Never raises RedisError/StoreUnavailable.

        A SUCCESS of an ``allow`` permit is sent in the background (coalesced); an IGNORED one
        changes nothing and is not sent; probes, permits holding a suspect lease and failures
        are recorded before this returns, after the pending successes of the same scopes.
        """
        decision = permit.decision
        if decision == "allow" and not self._closed and not permit.holds_lease:
            if outcome.cls is OutcomeClass.SUCCESS:
                if self._sender.add(permit.grants, outcome.latency_ms):
                    return
            elif outcome.cls is OutcomeClass.IGNORED:
                return
        pairs = self._pairs(permit.grants)
        if decision in ("degraded", "bypass"):
            self._record_local(RecordItem(tuple(pairs), outcome), rebase=False)
            return
        earlier = self._sender.take([g.scope for g in permit.grants])
        self._record_shared([*earlier, RecordItem(tuple(pairs), outcome)])

    def _pairs(self, grants: Sequence[ScopeGrant]) -> GrantPairs:
        return [(g, self._policy_for(g.scope)) for g in grants]

    def _record_shared(self, items: list[RecordItem]) -> None:
        try:
            transitions = self.guard.call(self._store.record_many, items, jitter=self._rng.random())
        except StoreUnavailable as exc:
            self._enter_degraded(exc)
            for item in items:
                self._record_local(item, rebase=True)
            return
        self._rejoined()
        self._announce(transitions, source="shared")

    def _local_grant(self, scope: Scope, policy: BreakerPolicy) -> ScopeGrant:
        snap = self._local.snapshot(scope, policy)
        return ScopeGrant(scope, snap.generation, fail_seq=snap.fail_seq)

    def _record_local(self, item: RecordItem, *, rebase: bool) -> None:
        pairs = item.grants
        if rebase:
            # A grant of the shared store means nothing to the local one: count it against
            # the local scope's current generation and failure sequence, as a non-probe call.
            pairs = tuple((self._local_grant(g.scope, p), p) for g, p in pairs)
        transitions = self._local.record(
            pairs, item.outcome, jitter=self._rng.random(), count=item.count, slow=item.slow
        )
        self._announce(transitions, source="local")

    # -- context manager -----------------------------------------------------------------

    @contextmanager
    def protect(self, scopes: Sequence[Scope]) -> Iterator[Permit]:
        """``with breaker.protect(scopes) as permit:`` around one provider call.

        Raises :class:`~breaker_service.errors.BreakerOpen` when a scope rejects. On normal
        exit records SUCCESS with the measured latency; on an exception with an ``outcome``
        attribute (e.g. :class:`fleet.errors.ProviderError`) records that class (and its
        ``retry_after_s``/``status``); on any other Exception records FAILURE; on
        BaseException (KeyboardInterrupt, SystemExit) records IGNORED, which frees a probe
        lease without counting. The exception is re-raised.
        """
        decision = self.acquire(scopes)
        if isinstance(decision, Rejection):
            raise BreakerOpen(decision.scope, decision.reason, decision.retry_after_s)
        started = time.monotonic()
        try:
            yield decision
        except BaseException as exc:
            self.record(decision, outcome_of(exc, (time.monotonic() - started) * 1000))
            raise
        self.record(decision, Outcome(OutcomeClass.SUCCESS, (time.monotonic() - started) * 1000))

    # -- reads and lifecycle -------------------------------------------------------------

    def snapshot(self, scope: Scope) -> ScopeSnapshot:
        """The shared state of ``scope``. Raises StoreUnavailable when Redis does not answer
        (an operator read never shows a made-up "closed")."""
        return self.guard.call(self._store.snapshot, scope, self._policy_for(scope))

    def local_snapshot(self, scope: Scope) -> ScopeSnapshot:
        """The state of ``scope`` in this process's fallback store."""
        return self._local.snapshot(scope, self._policy_for(scope))

    @property
    def degraded(self) -> bool:
        """True while this process decides without the shared store."""
        return self._degraded_since is not None

    @property
    def pending_records(self) -> int:
        """Background records not yet sent."""
        return self._sender.pending

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until background records are sent; False if ``timeout_s`` passed first."""
        return self._sender.flush(timeout_s)

    def close(self, timeout_s: float = 5.0) -> None:
        """Send every pending record (up to ``timeout_s``) and stop the sender thread."""
        if self._closed:
            return
        self._closed = True
        if not self._sender.close(timeout_s):
            log.error(
                "breaker worker=%s closed with pending_records=%d after timeout_s=%s",
                self.worker_id,
                self._sender.pending,
                timeout_s,
            )
        atexit.unregister(self._atexit)

    # -- announcing ----------------------------------------------------------------------

    def _announce(self, transitions: Sequence[Transition], *, source: TransitionSource) -> None:
        for t in transitions:
            log.info(
                "breaker=%s transition from=%s to=%s trigger=%s threshold=%s value=%s "
                "generation=%d worker=%s source=%s",
                t.scope,
                t.from_state,
                t.to_state,
                t.trigger,
                t.threshold,
                t.value,
                t.generation,
                self.worker_id,
                source,
            )
            if source == "shared" and self._events is not None:
                self._append(BreakerEvent.from_transition(t, worker=self.worker_id))
            self._notify("on_transition", t, source=source)

    def _append(self, event: BreakerEvent) -> None:
        assert self._events is not None
        try:
            self._events.append(event)
        except StoreUnavailable as exc:
            log.error(
                "breaker=%s event lost kind=%s to=%s worker=%s error=%s",
                event.scope,
                event.kind,
                event.to_state,
                self.worker_id,
                exc,
            )

    def _notify(self, hook: str, *args: object, **kwargs: object) -> None:
        for listener in self._listeners:
            try:
                getattr(listener, hook)(*args, **kwargs)
            except Exception:
                log.exception("breaker listener %r failed in %s", listener, hook)

    def _enter_degraded(self, exc: StoreUnavailable) -> None:
        with self._lock:
            if self._degraded_since is not None:
                return
            self._degraded_since = time.monotonic()
        log.warning(
            "breaker store unavailable worker=%s fallback=%s guard_reset_s=%s error=%s",
            self.worker_id,
            self.fallback,
            self.guard.reset_timeout_s,
            exc,
        )
        self._notify("on_store_unavailable", exc, fallback=self.fallback)

    def _rejoined(self) -> None:
        if self._degraded_since is None:
            return
        with self._lock:
            since, self._degraded_since = self._degraded_since, None
        if since is None:
            return
        degraded_s = time.monotonic() - since
        log.warning(
            "breaker store recovered worker=%s fallback=%s degraded_s=%.3f: shared state rules",
            self.worker_id,
            self.fallback,
            degraded_s,
        )
        if self._events is not None:
            self._append(
                BreakerEvent.store_recovered(
                    worker=self.worker_id, degraded_s=degraded_s, fallback=self.fallback
                )
            )
        self._notify("on_store_recovered", degraded_s=degraded_s)


def outcome_of(exc: BaseException, latency_ms: float) -> Outcome:
    """The breaker outcome of a failed call: the error's ``outcome`` class (FAILURE when it has
    none or an unknown one), its ``retry_after_s``, ``status`` and measured ``latency_ms``
    (else ``latency_ms``). Errors that are not ``Exception`` (KeyboardInterrupt...) are
    IGNORED."""
    if not isinstance(exc, Exception):
        return Outcome(OutcomeClass.IGNORED, latency_ms, detail=type(exc).__name__)
    raw = getattr(exc, "outcome", None)
    try:
        cls = OutcomeClass(raw) if raw is not None else OutcomeClass.FAILURE
    except ValueError:
        cls = OutcomeClass.FAILURE
    retry_after_s = getattr(exc, "retry_after_s", None)
    retry_after_ms = int(retry_after_s * 1000) if isinstance(retry_after_s, int | float) else None
    status = getattr(exc, "status", None)
    measured = getattr(exc, "latency_ms", 0.0)
    return Outcome(
        cls,
        float(measured) if isinstance(measured, int | float) and measured > 0 else latency_ms,
        retry_after_ms=retry_after_ms,
        status=status if isinstance(status, int) else None,
        detail=type(exc).__name__,
    )
