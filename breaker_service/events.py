"""The breaker event stream: one Redis stream ``<namespace>:events`` for the whole fleet.

Every shared-state transition is appended exactly once, by the process whose call caused it
(the store returns a transition to one caller only). Operator actions (manual control) are
appended to the same stream with ``actor`` and ``reason``, so it doubles as the audit log, and
a process that rejoins the shared state after a Redis outage appends a ``store_recovered``
event.

Fields of an entry (all strings): ``kind`` (``transition`` | ``store_recovered``), ``scope``,
``from``, ``to``, ``trigger``, ``threshold``, ``value``, ``generation``, ``worker``, ``at_ms``
(store time for transitions), ``actor`` and ``reason`` (manual actions only, else empty).

Retention: every XADD trims with ``MAXLEN ~ maxlen`` (``FLEET_EVENTS_MAXLEN``, default
10 000). Approximate trimming only drops whole stream nodes, so the stream keeps *at least*
``maxlen`` newest entries and at most about one node (100 entries by default) more; older
entries are gone for good. Export the stream elsewhere if you need a longer audit trail.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

import redis

from breaker_service.errors import StoreUnavailable
from breaker_service.store.base import Transition

EventKind = Literal["transition", "store_recovered"]


@dataclass(frozen=True)
class BreakerEvent:
    """One entry of the event stream. ``id`` is the stream id (empty before it is appended)."""

    kind: EventKind
    scope: str
    from_state: str
    to_state: str
    trigger: str
    threshold: float
    value: float
    generation: int
    worker: str
    at_ms: int
    actor: str = ""
    reason: str = ""
    id: str = ""

    @classmethod
    def from_transition(
        cls, transition: Transition, *, worker: str, actor: str = "", reason: str = ""
    ) -> BreakerEvent:
        """The event announcing ``transition``, caused by ``worker`` (and ``actor`` if manual)."""
        return cls(
            kind="transition",
            scope=str(transition.scope),
            from_state=transition.from_state,
            to_state=transition.to_state,
            trigger=transition.trigger,
            threshold=float(transition.threshold),
            value=float(transition.value),
            generation=transition.generation,
            worker=worker,
            at_ms=transition.at_ms,
            actor=actor,
            reason=reason,
        )

    @classmethod
    def store_recovered(cls, *, worker: str, degraded_s: float, fallback: str) -> BreakerEvent:
        """The event of one process rejoining the shared state after ``degraded_s`` seconds.

        ``value`` holds ``degraded_s``; ``from``/``to`` read ``fallback`` -> ``shared``;
        ``at_ms`` is the worker's wall clock (the store was not there to ask).
        """
        return cls(
            kind="store_recovered",
            scope="",
            from_state=fallback,
            to_state="shared",
            trigger="store_recovered",
            threshold=0.0,
            value=round(degraded_s, 3),
            generation=0,
            worker=worker,
            at_ms=int(time.time() * 1000),
        )

    def to_fields(self) -> dict[str, str]:
        """The stream entry's fields (``from``/``to`` for the states, no ``id``)."""
        return {
            "kind": self.kind,
            "scope": self.scope,
            "from": self.from_state,
            "to": self.to_state,
            "trigger": self.trigger,
            "threshold": repr(self.threshold),
            "value": repr(self.value),
            "generation": str(self.generation),
            "worker": self.worker,
            "at_ms": str(self.at_ms),
            "actor": self.actor,
            "reason": self.reason,
        }

    @classmethod
    def from_fields(cls, entry_id: str, fields: Mapping[str, str]) -> BreakerEvent:
        """Parse a stream entry; missing fields read as empty or 0 (older writers)."""
        kind = fields.get("kind", "transition")
        return cls(
            kind="store_recovered" if kind == "store_recovered" else "transition",
            scope=fields.get("scope", ""),
            from_state=fields.get("from", ""),
            to_state=fields.get("to", ""),
            trigger=fields.get("trigger", ""),
            threshold=float(fields.get("threshold") or 0),
            value=float(fields.get("value") or 0),
            generation=int(fields.get("generation") or 0),
            worker=fields.get("worker", ""),
            at_ms=int(fields.get("at_ms") or 0),
            actor=fields.get("actor", ""),
            reason=fields.get("reason", ""),
            id=entry_id,
        )

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the CLI's ``--json`` form)."""
        return asdict(self)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _parse(entries: Any) -> list[BreakerEvent]:
    return [
        BreakerEvent.from_fields(_text(eid), {_text(k): _text(v) for k, v in fields.items()})
        for eid, fields in entries or []
    ]


class EventLog:
    """Writer and reader of the stream ``<namespace>:events``.

    Every Redis error is raised as :class:`~breaker_service.errors.StoreUnavailable`.
    """

    def __init__(self, client: redis.Redis, *, namespace: str, maxlen: int = 10_000) -> None:
        """Use ``client`` (bytes or str responses) and keep about ``maxlen`` entries."""
        if maxlen < 1:
            raise ValueError(f"maxlen must be >= 1 (got {maxlen}); set FLEET_EVENTS_MAXLEN")
        self._client = client
        self.key = f"{namespace}:events"
        self.maxlen = maxlen

    def append(self, event: BreakerEvent) -> str:
        """XADD ``event`` with ``MAXLEN ~ maxlen``; returns the new entry id."""
        try:
            entry_id = self._client.xadd(
                self.key,
                event.to_fields(),  # type: ignore[arg-type]
                maxlen=self.maxlen,
                approximate=True,
            )
        except redis.RedisError as exc:
            raise StoreUnavailable(f"could not append to {self.key}: {exc}") from exc
        return _text(entry_id)

    def recent(self, count: int = 20) -> list[BreakerEvent]:
        """The newest ``count`` events, oldest first."""
        try:
            entries = self._client.xrevrange(self.key, count=count)
        except redis.RedisError as exc:
            raise StoreUnavailable(f"could not read {self.key}: {exc}") from exc
        return list(reversed(_parse(entries)))

    def last_id(self) -> str:
        """The id of the newest entry, or ``0-0`` when the stream is empty."""
        newest = self.recent(1)
        return newest[-1].id if newest else "0-0"

    def read_after(
        self, last_id: str, *, count: int = 100, block_ms: int | None = None
    ) -> list[BreakerEvent]:
        """Events after ``last_id`` (XREAD), waiting up to ``block_ms`` when there are none.

        Keep ``block_ms`` below the client's socket timeout.
        """
        try:
            reply: Any = self._client.xread({self.key: last_id}, count=count, block=block_ms)
        except redis.RedisError as exc:
            raise StoreUnavailable(f"could not read {self.key}: {exc}") from exc
        events: list[BreakerEvent] = []
        for _stream, entries in reply or []:
            events.extend(_parse(entries))
        return events

    def follow(
        self,
        *,
        after: str | None = None,
        block_ms: int = 100,
        stop: Callable[[], bool] = lambda: False,
    ) -> Iterator[BreakerEvent]:
        """Yield events as they are appended, from after ``after`` (default: the newest now).

        Polls with XREAD BLOCK ``block_ms`` until ``stop()`` returns True.
        """
        cursor = after if after is not None else self.last_id()
        while not stop():
            for event in self.read_after(cursor, block_ms=block_ms):
                cursor = event.id
                yield event
