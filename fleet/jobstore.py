"""Job records in Redis: one hash per job, per-state indexes and conservation counters.

Every state change is one Lua script call (compare-and-set), so each job reaches exactly one
terminal state even when Celery delivers it twice. Keys (``<ns>`` is the settings namespace)::

    <ns>:job:<id>               hash: state, job JSON, timestamps, cost, result/error, history
    <ns>:jobs:state:<state>     zset of job ids by last change (ms), one per state
    <ns>:jobs:all               zset of every job id by creation time (ms)
    <ns>:jobs:counts            hash: submitted, succeeded, escalated, failed, cancelled
    <ns>:jobs:dispatch_seq:<q>  counter: dispatch numbers of queue <q>

Dispatch numbers: every publish of a job takes the next number of its queue, stores it on the
record and puts it in the message's task id (``<job id>.<dispatch>``). A worker runs a message
only while its number is still the record's, so re-publishing a job (the sweeper,
:mod:`fleet.sweeper`) supersedes every older message of it: at most one of them ever runs.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

import redis
from pydantic import BaseModel, ConfigDict

from fleet.errors import JobNotFound, StateUnavailable
from fleet.redis_client import load_lua
from fleet.settings import FleetSettings
from fleet.types import Attempt

if TYPE_CHECKING:
    from fleet.jobs import AgentJob

log = logging.getLogger(__name__)

JobState = Literal["queued", "running", "succeeded", "escalated", "failed", "cancelled"]
STATES: tuple[JobState, ...] = (
    "queued",
    "running",
    "succeeded",
    "escalated",
    "failed",
    "cancelled",
)
TERMINAL_STATES: frozenset[str] = frozenset({"succeeded", "escalated", "failed", "cancelled"})
ACTIVE_STATES: tuple[JobState, ...] = ("queued", "running")
T = TypeVar("T")


def _now_ms() -> int:
    return int(time.time() * 1000)


class JobRecord(BaseModel):
    """What the store knows about one job (``fleet jobs show`` prints this).

    ``deliveries`` counts how often a worker started the job; ``policy``/``policy_reason``
    say which local-failure policy settled it and why; ``history`` is the attempt history of
    every ``llm_call`` of the job (successful steps and the final failure).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    job_id: str
    state: JobState
    agent: str
    task_type: str
    queue: str
    session_id: str | None = None
    workflow_id: str | None = None
    job: dict[str, Any]
    created_at_ms: int
    updated_at_ms: int
    started_at_ms: int | None = None
    finished_at_ms: int | None = None
    deliveries: int = 0
    dispatch: int = 0
    redispatches: int = 0
    sweep_reason: str | None = None
    retry_later_count: int = 0
    requeues: int = 0
    worker: str | None = None
    cost_usd: float = 0.0
    result: Any = None
    error: str | None = None
    policy: str | None = None
    policy_reason: str | None = None
    degraded: bool = False
    history: list[Attempt] = []

    @property
    def terminal(self) -> bool:
        """True once the job reached succeeded, escalated, failed or cancelled."""
        return self.state in TERMINAL_STATES


def _opt_int(raw: Mapping[str, str], key: str) -> int | None:
    value = raw.get(key)
    return int(value) if value else None


def _record(job_id: str, raw: Mapping[str, str]) -> JobRecord:
    job = json.loads(raw["job"])
    return JobRecord(
        job_id=job_id,
        state=cast(JobState, raw["state"]),
        agent=job["agent"],
        task_type=job["task_type"],
        queue=job["queue"],
        session_id=job.get("session_id"),
        workflow_id=job.get("workflow_id"),
        job=job,
        created_at_ms=int(raw["created_at_ms"]),
        updated_at_ms=int(raw["updated_at_ms"]),
        started_at_ms=_opt_int(raw, "started_at_ms"),
        finished_at_ms=_opt_int(raw, "finished_at_ms"),
        deliveries=int(raw.get("deliveries", "0")),
        dispatch=int(raw.get("dispatch", "0")),
        redispatches=int(raw.get("redispatches", "0")),
        sweep_reason=raw.get("sweep_reason") or None,
        retry_later_count=int(raw.get("retry_later_count", "0")),
        requeues=int(raw.get("requeues", "0")),
        worker=raw.get("worker") or None,
        cost_usd=float(raw.get("cost_usd", "0")),
        result=json.loads(raw["result"]) if raw.get("result") else None,
        error=raw.get("error") or None,
        policy=raw.get("policy") or None,
        policy_reason=raw.get("policy_reason") or None,
        degraded=raw.get("degraded") == "1",
        history=[Attempt.model_validate(a) for a in json.loads(raw.get("history") or "[]")],
    )


class JobStore:
    """Job records of one namespace. Build one per process: ``JobStore(settings, redis)``.

    Every Redis error is raised as :class:`~fleet.errors.StateUnavailable` (never read as
    "no job" or "fine").
    """

    def __init__(self, settings: FleetSettings, redis_client: redis.Redis) -> None:
        self.settings = settings
        self.redis = redis_client
        self._create = redis_client.register_script(load_lua("job_create.lua"))
        self._transition = redis_client.register_script(load_lua("job_transition.lua"))
        self._stamp = redis_client.register_script(load_lua("job_stamp.lua"))
        self._redispatch = redis_client.register_script(load_lua("job_redispatch.lua"))

    # keys -------------------------------------------------------------------------------
    def job_key(self, job_id: str) -> str:
        """``<ns>:job:<id>``: the record hash."""
        return self.settings.key("job", job_id)

    def _counts_key(self) -> str:
        return self.settings.key("jobs", "counts")

    def _index_key(self, state: str) -> str:
        return self.settings.key("jobs", "state", state)

    def _all_key(self) -> str:
        return self.settings.key("jobs", "all")

    def _seq_key(self, queue: str) -> str:
        return self.settings.key("jobs", "dispatch_seq", queue)

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except redis.RedisError as exc:
            raise StateUnavailable(
                f"job store: Redis did not answer while trying to {what}: {exc}"
            ) from exc

    # writes -----------------------------------------------------------------------------
    def create(self, job: AgentJob) -> bool:
        """Store a new ``queued`` record for ``job``; False (no change) if it already exists."""
        return bool(self._create_record(job, stamp=False))

    def create_dispatched(self, job: AgentJob) -> int:
        """Store a new ``queued`` record that already holds its first dispatch number, in one
        script call (submit then only publishes). Returns the number; 0 if the record
        already existed (nothing changed)."""
        return self._create_record(job, stamp=True)

    def _create_record(self, job: AgentJob, *, stamp: bool) -> int:
        now = _now_ms()
        fields: list[str | int] = ["job", job.model_dump_json(), "created_at_ms", now]
        keys = [self.job_key(job.job_id), self._counts_key(), self._index_key("queued")]
        keys.append(self._all_key())
        if stamp:
            keys.append(self._seq_key(job.queue))
        created = self._call(
            f"create job {job.job_id}",
            lambda: self._create(keys=keys, args=[job.job_id, now, *fields]),
        )
        return int(created)

    def transition(
        self,
        job_id: str,
        new_state: JobState,
        *,
        allowed_from: Iterable[str],
        fields: Mapping[str, str | int | float] | None = None,
    ) -> tuple[bool, str | None]:
        """Move ``job_id`` to ``new_state`` if it is in one of ``allowed_from`` (atomic CAS).

        Returns ``(changed, previous_or_current_state)``; ``(False, None)`` when no record
        exists. ``fields`` are written in the same step.
        """
        status, state = self._move(job_id, new_state, allowed_from, fields, guard=None)
        return status == 1, state

    def _move(
        self,
        job_id: str,
        new_state: JobState,
        allowed_from: Iterable[str],
        fields: Mapping[str, str | int | float] | None,
        *,
        guard: int | None,
    ) -> tuple[int, str | None]:
        now = _now_ms()
        keys = [self.job_key(job_id), self._counts_key(), *(self._index_key(s) for s in STATES)]
        args: list[str | int | float] = [job_id, new_state, f" {' '.join(allowed_from)} ", now]
        args.append("" if guard is None else guard)
        for name, value in (fields or {}).items():
            args.extend((name, value))
        raw = self._call(
            f"move job {job_id} to {new_state}", lambda: self._transition(keys=keys, args=args)
        )
        state = raw[1]
        state_text = state.decode() if isinstance(state, bytes) else str(state)
        return int(raw[0]), (state_text or None)

    def mark_running(
        self, job_id: str, *, worker: str, delivery: int, dispatch: int | None = None
    ) -> Literal["running", "terminal", "superseded"]:
        """queued/running -> running for this delivery.

        ``dispatch`` (the message's dispatch number) must still be the record's, else the
        message was superseded by a newer publish and must not run. Returns ``running``, or
        why not: ``terminal`` (or no record) or ``superseded``.
        """
        status, _ = self._move(
            job_id,
            "running",
            ACTIVE_STATES,
            {"worker": worker, "deliveries": delivery, "started_at_ms": _now_ms()},
            guard=dispatch,
        )
        if status == 1:
            return "running"
        return "superseded" if status == -2 else "terminal"

    def stamp_dispatch(self, job_id: str, queue: str) -> int:
        """Give ``job_id`` the next dispatch number of ``queue`` (call just before publishing).

        Raises :class:`~fleet.errors.JobNotFound` when no record exists.
        """
        keys = [self.job_key(job_id), self._seq_key(queue)]
        seq = int(self._call(f"stamp job {job_id}", lambda: self._stamp(keys=keys, args=[])))
        if not seq:
            raise JobNotFound(f"no job with id {job_id!r}; create its record before publishing")
        return seq

    def redispatch(
        self,
        record: JobRecord,
        *,
        now_ms: int,
        reason: str,
    ) -> int:
        """Put a stuck ``record`` back to ``queued`` with a new dispatch number (the sweeper).

        Compare-and-set on the state and ``updated_at_ms`` read in ``record``: returns the new
        dispatch number, or 0 when the job changed meanwhile (nothing changed then).
        """
        keys = [
            self.job_key(record.job_id),
            self._index_key("queued"),
            self._index_key("running"),
            self._seq_key(record.queue),
        ]
        args: list[str | int] = [
            record.job_id,
            record.state,
            record.updated_at_ms,
            now_ms,
            reason,
        ]
        return int(
            self._call(
                f"re-dispatch job {record.job_id}",
                lambda: self._redispatch(keys=keys, args=args),
            )
        )

    def finish(
        self,
        job_id: str,
        state: JobState,
        *,
        result: Any = None,
        error: str | None = None,
        policy: str | None = None,
        policy_reason: str | None = None,
        history: Sequence[Attempt] = (),
        degraded: bool = False,
        cost_usd: float = 0.0,
    ) -> bool:
        """Settle an active job in terminal ``state``. False when it was already terminal."""
        if state not in TERMINAL_STATES:
            raise ValueError(f"finish(state={state!r}): use one of {sorted(TERMINAL_STATES)}")
        fields: dict[str, str | int | float] = {
            "finished_at_ms": _now_ms(),
            "result": json.dumps(result) if result is not None else "",
            "error": error or "",
            "policy": policy or "",
            "policy_reason": policy_reason or "",
            "history": json.dumps([a.model_dump(mode="json") for a in history]),
            "degraded": "1" if degraded else "0",
            "cost_usd": repr(float(cost_usd)),
        }
        changed, previous = self.transition(
            job_id, state, allowed_from=ACTIVE_STATES, fields=fields
        )
        if not changed:
            log.warning(
                "job not settled: already terminal job_id=%s wanted=%s current=%s",
                job_id,
                state,
                previous,
            )
        return changed

    def back_to_queued(
        self,
        job_id: str,
        *,
        allowed_from: Iterable[str],
        fields: Mapping[str, str | int | float] | None = None,
    ) -> bool:
        """Put a job back to ``queued`` (retry_later, requeue from escalation)."""
        changed, _ = self.transition(job_id, "queued", allowed_from=allowed_from, fields=fields)
        return changed

    def incr_field(self, job_id: str, field: str) -> int:
        """Atomically add one to a counter field of the record (e.g. ``retry_later_count``)."""
        return int(
            self._call(
                f"count {field} of {job_id}",
                lambda: cast(int, self.redis.hincrby(self.job_key(job_id), field, 1)),
            )
        )

    # reads ------------------------------------------------------------------------------
    def get(self, job_id: str) -> JobRecord:
        """The record of ``job_id``; raises :class:`~fleet.errors.JobNotFound`."""
        raw = self._call(
            f"read job {job_id}",
            lambda: cast("dict[bytes, bytes]", self.redis.hgetall(self.job_key(job_id))),
        )
        if not raw:
            raise JobNotFound(f"no job with id {job_id!r} in namespace {self.settings.namespace!r}")
        return _record(job_id, {k.decode(): v.decode() for k, v in raw.items()})

    def get_many(self, job_ids: Sequence[str]) -> list[JobRecord]:
        """The records of ``job_ids`` in one pipelined round trip, in order; ids without a
        record are left out."""

        def read() -> list[dict[bytes, bytes]]:
            pipe = self.redis.pipeline(transaction=False)
            for job_id in job_ids:
                pipe.hgetall(self.job_key(job_id))
            return cast("list[dict[bytes, bytes]]", pipe.execute())

        raws = self._call(f"read {len(job_ids)} jobs", read) if job_ids else []
        return [
            _record(job_id, {k.decode(): v.decode() for k, v in raw.items()})
            for job_id, raw in zip(job_ids, raws, strict=True)
            if raw
        ]

    def admission(self, job_id: str) -> tuple[str | None, int]:
        """``(state, dispatch)`` of ``job_id`` in one read; ``(None, 0)`` without a record."""
        raw = self._call(
            f"read state of {job_id}",
            lambda: cast(
                "list[bytes | None]",
                self.redis.hmget(self.job_key(job_id), ["state", "dispatch"]),
            ),
        )
        state, dispatch = raw
        return (state.decode() if state else None), int(dispatch or 0)

    def untouched_since(self, state: JobState, before_ms: int, *, limit: int) -> list[str]:
        """Ids of jobs in ``state`` whose last change is older than ``before_ms`` (oldest
        first, at most ``limit``)."""
        key = self._index_key(state)
        ids = self._call(
            f"list {state} jobs untouched since {before_ms}",
            lambda: cast(
                "list[bytes]",
                self.redis.zrangebyscore(key, "-inf", f"({before_ms}", start=0, num=limit),
            ),
        )
        return [i.decode() for i in ids]

    def state(self, job_id: str) -> str | None:
        """The current state of ``job_id``, or None when no record exists."""
        raw = self._call(
            f"read state of {job_id}",
            lambda: cast("bytes | None", self.redis.hget(self.job_key(job_id), "state")),
        )
        return raw.decode() if raw else None

    def list(self, state: str | None = None, *, limit: int = 50) -> list[JobRecord]:
        """Most recently changed jobs first, optionally only those in ``state``."""
        if state is not None and state not in STATES:
            raise ValueError(f"state={state!r} is not a job state; use one of {list(STATES)}")
        key = self._index_key(state) if state else self._all_key()
        ids = self._call(
            "list jobs",
            lambda: cast("list[bytes]", self.redis.zrevrange(key, 0, max(limit, 1) - 1)),
        )
        return self.get_many([i.decode() for i in ids])

    def counts(self) -> dict[str, int]:
        """``submitted`` and one counter per terminal state (missing ones are 0)."""
        raw = self._call(
            "read job counters",
            lambda: cast("dict[bytes, bytes]", self.redis.hgetall(self._counts_key())),
        )
        counts = {k.decode(): int(v) for k, v in raw.items()}
        return {name: counts.get(name, 0) for name in ("submitted", *sorted(TERMINAL_STATES))}

    def state_sizes(self) -> dict[str, int]:
        """How many jobs each state index holds right now."""

        def read() -> dict[str, int]:
            pipe = self.redis.pipeline(transaction=False)
            for s in STATES:
                pipe.zcard(self._index_key(s))
            return dict(zip(STATES, (int(n) for n in pipe.execute()), strict=True))

        return self._call("count jobs per state", read)
