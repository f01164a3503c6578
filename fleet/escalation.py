"""The durable escalation queue: jobs whose primary and backups all failed wait here.

A worker parks a job under the ``escalate`` policy (:meth:`EscalationQueue.park`); operators
list, show, requeue or resolve entries (``fleet escalations ...``); and when a breaker that
caused escalations closes again, :class:`fleet.replay.AutoReplayListener` requeues the entries
it caused, once each, oldest first, for task types whose profile sets ``auto_replay``.
When Sentry is enabled (:func:`fleet.sentry.init_sentry`), every parked entry is reported.

Entries live in Redis (see :mod:`fleet.escalation_store` for keys and atomicity) and survive
worker crashes and a Redis restart with AOF on. Requeue is at most once per operation: the
entry is claimed (``open`` -> ``requeued``, ``replay_count`` + 1) before the job is handed to
the requeue callback; if the callback raises, the claim is given back and the error re-raised.
"""

from __future__ import annotations

import builtins
import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Literal

import redis
from pydantic import BaseModel, ConfigDict, Field

from fleet.errors import ConfigError, EscalationConflict, EscalationNotFound
from fleet.escalation_store import STATUSES, EscalationStore, Fields, Status
from fleet.settings import FleetSettings
from fleet.types import Attempt

log = logging.getLogger(__name__)

StatusFilter = Literal["open", "requeued", "resolved", "all"]
Requeue = Callable[[Mapping[str, Any]], None]
_BATCH = 200


class EscalationEntry(BaseModel):
    """One escalated job: what it was, why it failed, and what happened to it since.

    ``providers`` and ``scopes`` come from the attempts: each attempt's provider (provider
    scope) and model key ``provider/name`` (model scope), in first-seen order. ``replay_count``
    counts requeues (manual and automatic, carried over when the same job escalates again);
    ``auto_replayed`` is True once auto-replay requeued this job, which it never does twice.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    job_id: str
    job: dict[str, Any]
    reason: str
    policy: str
    task_type: str
    queue: str
    providers: list[str]
    scopes: list[str]
    attempts: list[Attempt]
    created_at: float
    replay_count: int = 0
    status: Status = "open"
    note: str = ""
    resolved_by: str = ""
    resolved_at: float | None = None
    requeued_by: str = ""
    requeued_at: float | None = None
    auto_replayed: bool = False
    previous_id: str | None = Field(None, description="This job's previous entry, if any.")

    def age_s(self, now: float) -> float:
        """Seconds since the entry was parked."""
        return max(0.0, now - self.created_at)


def _scopes(attempts: Sequence[Attempt]) -> tuple[list[str], list[str]]:
    providers = list(dict.fromkeys(a.provider for a in attempts if a.provider))
    models = [m for m in dict.fromkeys(a.model for a in attempts if a.model) if m not in providers]
    return providers, providers + models


def _entry(fields: Fields) -> EscalationEntry:
    data: dict[str, Any] = json.loads(fields["entry"])
    resolved_at = fields.get("resolved_at", "")
    requeued_at = fields.get("requeued_at", "")
    data.update(
        status=fields["status"],
        replay_count=int(fields.get("replay_count", "0")),
        auto_replayed=fields.get("auto_replayed") == "1",
        note=fields.get("note", ""),
        resolved_by=fields.get("resolved_by", ""),
        resolved_at=float(resolved_at) if resolved_at else None,
        requeued_by=fields.get("requeued_by", ""),
        requeued_at=float(requeued_at) if requeued_at else None,
    )
    return EscalationEntry.model_validate(data)


def _default_requeue(settings: FleetSettings) -> Requeue:
    def requeue(job: Mapping[str, Any]) -> None:
        try:
            from fleet.jobs import requeue_job  # type: ignore[import-not-found,unused-ignore]  # noqa: PLC0415
        except ImportError as exc:
            raise ConfigError(
                "cannot requeue escalations: fleet.jobs.requeue_job is not importable; "
                "install the complete agent-fleet package or pass requeue= to EscalationQueue"
            ) from exc
        requeue_job(settings, job)

    return requeue


def _registry_auto_replay(settings: FleetSettings) -> Callable[[str], bool]:
    """Read ``TaskProfile.auto_replay`` from the registry, loaded once on first use."""
    loaded: list[Callable[[str], bool]] = []

    def enabled(task_type: str) -> bool:
        if not loaded:
            from fleet.registry import load_registry  # noqa: PLC0415
            from fleet.replay import registry_auto_replay  # noqa: PLC0415 - replay imports us

            try:
                loaded.append(registry_auto_replay(load_registry(settings.registry_path)))
            except ConfigError as exc:
                log.error("auto-replay off: the registry did not load (%s)", exc)
                loaded.append(lambda _task_type: False)
        return loaded[0](task_type)

    return enabled


def _report(entry: EscalationEntry) -> None:
    """Send the entry to Sentry when :func:`fleet.sentry.init_sentry` enabled it."""
    import sentry_sdk  # noqa: PLC0415 - cheap after the first import

    if not sentry_sdk.get_client().is_active():
        return
    from fleet.sentry import report_escalation  # noqa: PLC0415 - sentry imports this module

    try:
        report_escalation(entry)
    except Exception:  # a monitoring failure must never lose or fail the escalation
        log.exception("escalation not reported to Sentry entry=%s", entry.id)


class EscalationQueue:
    """Client of the durable escalation queue (one per process; cheap to create).

    ``requeue(job)`` puts a job back on its original Celery queue with a fresh attempt budget;
    it defaults to ``fleet.jobs.requeue_job(settings, job)``. ``auto_replay_enabled(task_type)``
    says whether a task type opted into auto-replay; it defaults to the registry's
    ``TaskProfile.auto_replay``. ``clock`` (seconds) stamps entries and measures ages.
    """

    def __init__(
        self,
        settings: FleetSettings,
        redis: redis.Redis,
        requeue: Requeue | None = None,
        *,
        auto_replay_enabled: Callable[[str], bool] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._store = EscalationStore(settings, redis)
        self._requeue = requeue or _default_requeue(settings)
        self._auto_replay_enabled = auto_replay_enabled or _registry_auto_replay(settings)
        self._clock = clock

    # -- park and read --------------------------------------------------------------------
    def park(
        self,
        *,
        job: Mapping[str, Any],
        reason: str,
        policy: str,
        task_type: str,
        attempts: Sequence[Attempt],
        queue: str,
    ) -> EscalationEntry:
        """Store a job that could not complete, with its attempt history. Returns the entry.

        ``job`` is the AgentJob as JSON and must carry ``job_id``. When the same job escalated
        before, its replay count and auto-replayed flag carry over (auto-replay stays once).
        Raises :class:`StateUnavailable` when Redis does not answer: nothing was stored then.
        """
        job_id = str(job.get("job_id") or "")
        if not job_id:
            raise ValueError("park(job=...): job has no 'job_id'; pass the AgentJob as JSON")
        now = self._clock()
        providers, scopes = _scopes(attempts)

        def build(entry_id: str, previous: Fields | None) -> Fields:
            data = {
                "id": entry_id,
                "job_id": job_id,
                "job": dict(job),
                "reason": reason,
                "policy": policy,
                "task_type": task_type,
                "queue": queue,
                "providers": providers,
                "scopes": scopes,
                "attempts": [a.model_dump(mode="json") for a in attempts],
                "created_at": now,
                "previous_id": previous and json.loads(previous["entry"])["id"],
            }
            return {
                "entry": json.dumps(data, separators=(",", ":")),
                "created_at": repr(now),
                "status": "open",
                "replay_count": (previous or {}).get("replay_count", "0"),
                "auto_replayed": (previous or {}).get("auto_replayed", "0"),
            }

        fields = self._store.insert(job_id=job_id, created_at=now, build=build)
        entry = _entry(fields)
        _report(entry)
        log.warning(
            "escalation parked entry=%s job=%s task_type=%s reason=%s policy=%s scopes=%s",
            entry.id, job_id, task_type, reason, policy, ",".join(scopes),
        )  # fmt: skip
        return entry

    def get(self, entry_id: str) -> EscalationEntry:
        """The entry ``entry_id``; raises :class:`EscalationNotFound` when there is none."""
        fields = self._store.read(entry_id)
        if fields is None:
            raise EscalationNotFound(
                f"no escalation entry {entry_id!r}; list entries with `fleet escalations list`"
            )
        return _entry(fields)

    def _iter(
        self, *, status: StatusFilter, older_than_s: float | None
    ) -> Iterator[EscalationEntry]:
        if status != "all" and status not in STATUSES:
            raise ValueError(
                f"status={status!r} is invalid: use one of open, requeued, resolved, all"
            )
        if older_than_s is not None and older_than_s < 0:
            raise ValueError(f"older_than_s={older_than_s} is negative: give 0 or more seconds")
        max_created = self._clock() - older_than_s if older_than_s is not None else float("inf")
        key_status: Status | None = None if status == "all" else status
        offset = 0
        while True:
            ids = self._store.ids(
                key_status, max_created_at=max_created, offset=offset, count=_BATCH
            )
            for fields in self._store.read_many(ids):
                if fields is not None:  # purged between the two reads
                    yield _entry(fields)
            if len(ids) < _BATCH:
                return
            offset += _BATCH

    def list(
        self,
        *,
        status: StatusFilter = "open",
        reason: str | None = None,
        task_type: str | None = None,
        provider: str | None = None,
        older_than_s: float | None = None,
        limit: int | None = 100,
    ) -> list[EscalationEntry]:
        """Entries oldest first, filtered by status, reason, task type, provider and age.

        ``provider`` matches any provider the job attempted; ``older_than_s`` keeps entries
        parked at least that many seconds ago; ``limit=None`` returns every match.
        """
        found: list[EscalationEntry] = []
        for entry in self._iter(status=status, older_than_s=older_than_s):
            if limit is not None and len(found) >= limit:
                break
            if reason is not None and entry.reason != reason:
                continue
            if task_type is not None and entry.task_type != task_type:
                continue
            if provider is not None and provider not in entry.providers:
                continue
            found.append(entry)
        return found

    def count(
        self,
        *,
        status: StatusFilter = "open",
        reason: str | None = None,
        task_type: str | None = None,
        provider: str | None = None,
        older_than_s: float | None = None,
    ) -> int:
        """How many entries match (same filters as :meth:`list`, no limit)."""
        if reason is None and task_type is None and provider is None and older_than_s is None:
            if status != "all" and status not in STATUSES:
                raise ValueError(
                    f"status={status!r} is invalid: use one of open, requeued, resolved, all"
                )
            return self._store.size(None if status == "all" else status)
        found = self.list(
            status=status, reason=reason, task_type=task_type, provider=provider,
            older_than_s=older_than_s, limit=None,
        )  # fmt: skip
        return len(found)

    # -- requeue, resolve, purge ----------------------------------------------------------
    def _claim(self, entry_id: str, *, actor: str, auto: bool, force: bool = False) -> int:
        fields = {"requeued_by": actor, "requeued_at": repr(self._clock())}
        if auto:
            fields["auto_replayed"] = "1"
        allowed: tuple[Status, ...] = ("open", "requeued") if force else ("open",)
        code, _status = self._store.transition(
            entry_id, allowed=allowed, to="requeued", replay_delta=1, once=auto, fields=fields
        )
        if code == 0:
            raise EscalationNotFound(f"no escalation entry {entry_id!r}")
        return code

    def _requeue_claimed(self, entry: EscalationEntry, *, auto: bool) -> None:
        try:
            self._requeue(entry.job)
        except BaseException:
            give_back = {"requeued_by": "", "requeued_at": ""}
            if auto:
                give_back["auto_replayed"] = "0"
            self._store.transition(
                entry.id, allowed=("requeued",), to="open", replay_delta=-1, fields=give_back
            )
            log.exception(
                "escalation requeue failed, entry back to open entry=%s job=%s",
                entry.id, entry.job_id,
            )  # fmt: skip
            raise

    def requeue(self, entry_id: str, *, actor: str, force: bool = False) -> EscalationEntry:
        """Requeue one open entry's job to its original queue (at most once per call).

        Raises :class:`EscalationNotFound`, or :class:`EscalationConflict` when the entry is
        not open (already requeued or resolved). ``force=True`` also requeues a ``requeued``
        entry again (e.g. the process died between the claim and the hand-off); resolved
        entries never. If the requeue callback raises, the entry is open again and the error
        propagates.
        """
        code = self._claim(entry_id, actor=actor, auto=False, force=force)
        if code != 1:
            current = self.get(entry_id)
            hint = "" if force or current.status == "resolved" else "; --force requeues it again"
            raise EscalationConflict(
                f"escalation {entry_id} is {current.status}, not open: only open entries can be "
                f"requeued{hint}"
            )
        entry = self.get(entry_id)
        self._requeue_claimed(entry, auto=False)
        log.info(
            "escalation requeued entry=%s job=%s queue=%s actor=%s replay_count=%d",
            entry.id, entry.job_id, entry.queue, actor, entry.replay_count,
        )  # fmt: skip
        return entry

    def requeue_matching(
        self,
        *,
        actor: str,
        reason: str | None = None,
        task_type: str | None = None,
        provider: str | None = None,
        older_than_s: float | None = None,
    ) -> builtins.list[EscalationEntry]:
        """Requeue every open entry matching the filters (no filter: all), oldest first.

        Entries claimed concurrently by someone else are skipped. Returns the requeued entries.
        """
        done: list[EscalationEntry] = []
        matching = self.list(
            status="open", reason=reason, task_type=task_type, provider=provider,
            older_than_s=older_than_s, limit=None,
        )  # fmt: skip
        for candidate in matching:
            try:
                done.append(self.requeue(candidate.id, actor=actor))
            except (EscalationConflict, EscalationNotFound):
                continue
        return done

    def resolve(self, entry_id: str, *, note: str, actor: str) -> EscalationEntry:
        """Close an open or requeued entry by hand, with a note saying what was done."""
        if not note.strip():
            raise ValueError("resolve(note=...) is empty: say what was done about the job")
        fields = {"note": note, "resolved_by": actor, "resolved_at": repr(self._clock())}
        code, status = self._store.transition(
            entry_id, allowed=("open", "requeued"), to="resolved", fields=fields
        )
        if code == 0:
            raise EscalationNotFound(f"no escalation entry {entry_id!r}")
        if code != 1:
            raise EscalationConflict(f"escalation {entry_id} is already {status}")
        log.info("escalation resolved entry=%s actor=%s note=%r", entry_id, actor, note)
        return self.get(entry_id)

    def purge_resolved(self, *, older_than_s: float = 0) -> int:
        """Delete resolved entries resolved at least ``older_than_s`` ago. Returns how many."""
        if older_than_s < 0:
            raise ValueError(f"older_than_s={older_than_s} is negative: give 0 or more seconds")
        cutoff = self._clock() - older_than_s
        purged = 0
        for entry in list(self._iter(status="resolved", older_than_s=None)):
            if self._store.purge(entry.id, entry.job_id, cutoff=cutoff):
                purged += 1
        log.info("escalations purged count=%d older_than_s=%s", purged, older_than_s)
        return purged

    def auto_replay(self, scope: str) -> int:
        """Requeue the open entries caused by breaker ``scope`` that opted into auto-replay.

        ``scope`` is ``provider`` or ``provider/model``. Oldest first; each job at most once
        in its life (an auto-replayed job that escalates again waits for an operator). Returns
        how many were requeued; a failing requeue callback gives its entry back and raises.
        """
        replayed = 0
        candidates = [
            e
            for e in self.list(status="open", limit=None)
            if scope in e.scopes and not e.auto_replayed and self._auto_replay_enabled(e.task_type)
        ]
        for candidate in candidates:
            code = self._claim(candidate.id, actor=f"auto-replay:{scope}", auto=True)
            if code != 1:
                continue
            entry = self.get(candidate.id)
            self._requeue_claimed(entry, auto=True)
            replayed += 1
            log.info(
                "escalation auto-replayed entry=%s job=%s scope=%s task_type=%s",
                entry.id, entry.job_id, scope, entry.task_type,
            )  # fmt: skip
        return replayed
