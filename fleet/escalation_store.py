"""Redis layout of the escalation queue, and its atomic steps (MULTI/EXEC and Lua).

Keys (``<ns>`` is ``FleetSettings.namespace``)::

    <ns>:esc:entry:<id>          hash: "entry" (immutable JSON) + mutable fields (status,
                                 replay_count, auto_replayed, note, resolved_*, requeued_*)
    <ns>:esc:all                 sorted set id -> created_at (every entry)
    <ns>:esc:status:<status>     sorted set id -> created_at, one per status
    <ns>:esc:job:<job_id>        string: the newest entry id of that job
    <ns>:esc:seq                 counter behind entry ids ("e" + 12 digits: ids sort by age,
                                 so entries parked in the same instant still list in order)

Every change that touches more than one key is one atomic step, so a crash between two
commands can never leave an entry without its indexes: a new entry is written with
MULTI/EXEC; status changes and purges are Lua scripts (``fleet/lua/esc_*.lua``) that
compare-and-set the status. Redis errors become :class:`~fleet.errors.StateUnavailable`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Literal, cast

import redis

from fleet.errors import StateUnavailable
from fleet.redis_client import load_lua
from fleet.settings import FleetSettings

Status = Literal["open", "requeued", "resolved"]
STATUSES: tuple[Status, ...] = ("open", "requeued", "resolved")

Fields = dict[str, str]
"""One entry hash, decoded to text."""


@contextmanager
def _redis_op(op: str) -> Iterator[None]:
    try:
        yield
    except redis.RedisError as exc:
        raise StateUnavailable(
            f"escalation queue: Redis did not answer during {op} ({type(exc).__name__}: {exc}); "
            "check FLEET_REDIS_URL and that Redis is up"
        ) from exc


def _decode(raw: Mapping[bytes, bytes]) -> Fields:
    return {k.decode(): v.decode() for k, v in raw.items()}


class EscalationStore:
    """The escalation queue's Redis keys and atomic operations (no business rules here)."""

    def __init__(self, settings: FleetSettings, client: redis.Redis) -> None:
        self._settings = settings
        self._redis = client
        self._transition = client.register_script(load_lua("esc_transition.lua"))
        self._purge = client.register_script(load_lua("esc_purge.lua"))

    # -- keys -----------------------------------------------------------------------------
    def entry_key(self, entry_id: str) -> str:
        """Key of one entry hash."""
        return self._settings.key("esc", "entry", entry_id)

    def all_key(self) -> str:
        """Key of the sorted set holding every entry id."""
        return self._settings.key("esc", "all")

    def status_key(self, status: Status) -> str:
        """Key of the sorted set of entries in ``status``."""
        return self._settings.key("esc", "status", status)

    def job_key(self, job_id: str) -> str:
        """Key of the newest-entry pointer of one job."""
        return self._settings.key("esc", "job", job_id)

    # -- writes ---------------------------------------------------------------------------
    def insert(
        self,
        *,
        job_id: str,
        created_at: float,
        build: Callable[[str, Fields | None], Fields],
    ) -> Fields:
        """Write a new open entry and its indexes in one MULTI/EXEC.

        ``build(entry_id, previous)`` returns the hash fields, given the new id and the job's
        previous entry (or None). It runs inside a WATCH on the job pointer, so concurrent
        parks of one job serialise.
        """
        job_key = self.job_key(job_id)
        written: Fields = {}

        def txn(pipe: redis.client.Pipeline) -> None:
            entry_id = f"e{cast(int, pipe.incr(self._settings.key('esc', 'seq'))):012d}"
            prev_id = cast(bytes | None, pipe.get(job_key))
            previous: Fields | None = None
            if prev_id is not None:
                raw = cast(dict[bytes, bytes], pipe.hgetall(self.entry_key(prev_id.decode())))
                previous = _decode(raw) if raw else None
            fields = build(entry_id, previous)
            pipe.multi()
            pipe.hset(self.entry_key(entry_id), mapping=cast(Any, fields))
            pipe.zadd(self.all_key(), {entry_id: created_at})
            pipe.zadd(self.status_key("open"), {entry_id: created_at})
            pipe.set(job_key, entry_id)
            written.clear()
            written.update(fields)

        with _redis_op("park"):
            self._redis.transaction(txn, job_key)
        return written

    def transition(
        self,
        entry_id: str,
        *,
        allowed: Sequence[Status],
        to: Status,
        replay_delta: int = 0,
        once: bool = False,
        fields: Mapping[str, str] | None = None,
    ) -> tuple[int, str]:
        """Compare-and-set the status of one entry (see ``esc_transition.lua`` for codes)."""
        argv: list[str] = [entry_id, ",".join(allowed), to, str(replay_delta), "1" if once else "0"]
        for key, value in (fields or {}).items():
            argv += [key, value]
        keys = [self.entry_key(entry_id), *(self.status_key(s) for s in STATUSES)]
        with _redis_op(f"status change to {to}"):
            code, status = self._transition(keys=keys, args=argv)
        return int(code), status.decode() if isinstance(status, bytes) else str(status)

    def purge(self, entry_id: str, job_id: str, *, cutoff: float) -> bool:
        """Delete one resolved entry (resolved at or before ``cutoff``) with its indexes."""
        keys = [
            self.entry_key(entry_id),
            self.all_key(),
            self.status_key("resolved"),
            self.job_key(job_id),
        ]
        with _redis_op("purge"):
            return bool(self._purge(keys=keys, args=[entry_id, repr(cutoff)]))

    # -- reads ----------------------------------------------------------------------------
    def read(self, entry_id: str) -> Fields | None:
        """The entry hash, or None when there is no such entry."""
        with _redis_op("read"):
            raw = cast(dict[bytes, bytes], self._redis.hgetall(self.entry_key(entry_id)))
        return _decode(raw) if raw else None

    def read_many(self, entry_ids: Sequence[str]) -> list[Fields | None]:
        """Entry hashes for ``entry_ids`` in one pipelined round trip (None where missing)."""
        if not entry_ids:
            return []
        with _redis_op("read"):
            pipe = self._redis.pipeline(transaction=False)
            for entry_id in entry_ids:
                pipe.hgetall(self.entry_key(entry_id))
            raws = pipe.execute()
        return [_decode(raw) if raw else None for raw in raws]

    def ids(
        self, status: Status | None, *, max_created_at: float, offset: int, count: int
    ) -> list[str]:
        """Entry ids (oldest first) in ``status`` (None: every status) created at or before."""
        key = self.all_key() if status is None else self.status_key(status)
        with _redis_op("list"):
            raw = cast(
                list[bytes],
                self._redis.zrangebyscore(key, "-inf", max_created_at, start=offset, num=count),
            )
        return [member.decode() for member in raw]

    def size(self, status: Status | None) -> int:
        """Number of entries in ``status`` (None: every status)."""
        key = self.all_key() if status is None else self.status_key(status)
        with _redis_op("count"):
            return int(cast(int, self._redis.zcard(key)))
