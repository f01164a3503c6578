"""Task type -> route (primary model, then backups) under the fleet-wide active preset.

Hot switch without a Redis round trip per model call: a :class:`Router` keeps the active
preset for ``settings.preset_cache_s`` seconds (measured on an injected monotonic clock) and
then re-reads ONE hash with one ``HGETALL`` (:meth:`fleet.presets.PresetStore.active`). So a
process makes at most one preset round trip per ``preset_cache_s`` however many calls it
routes, and every process sees a switch within ``preset_cache_s`` of it, without restart.
Pub/sub invalidation was left out on purpose: it needs a listener thread per process (and a
reconnect story) to save at most ``preset_cache_s`` of staleness, and a missed message would
still need this poll as a backstop.

If Redis does not answer, routing goes on with the last preset it knew (``Route.stale`` is
True) and logs one warning per outage, not one per call; with nothing ever read it uses the
registry's ``default_preset`` and says so. During an outage it re-tries Redis at most once per
``max(preset_cache_s, OUTAGE_RETRY_S)``, so callers do not each pay a socket timeout (even
with ``FLEET_PRESET_CACHE_S=0``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis

from fleet.errors import StateUnavailable
from fleet.presets import ActivePreset, PresetStore, default_active
from fleet.registry import ModelInfo, Registry, TaskProfile
from fleet.settings import FleetSettings

log = logging.getLogger("fleet.routing")

#: Shortest pause between two preset reads while Redis is failing (seconds).
OUTAGE_RETRY_S = 1.0


@dataclass(frozen=True)
class Route:
    """Where one call of ``task_type`` goes: ``candidates`` = primary, then backups.

    ``preset``/``preset_version`` identify the active preset used; ``stale`` is True when Redis
    could not be read and the last known (or default) preset was used instead.
    """

    task_type: str
    task: TaskProfile
    preset: str
    preset_version: int
    candidates: list[ModelInfo]
    stale: bool


class Router:
    """Routes task types on the fleet-wide active preset, cached per process (thread-safe)."""

    def __init__(
        self,
        settings: FleetSettings,
        registry: Registry,
        redis: redis.Redis,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.store = PresetStore(settings, redis, registry)
        self._clock = clock
        self._lock = threading.Lock()
        self._known: ActivePreset | None = None
        self._next_check = float("-inf")
        self._outage = False
        self.preset_reads = 0

    def route(self, task_type: str) -> Route:
        """The route of ``task_type`` now. Raises UnknownTaskType for an undeclared type."""
        task = self.registry.task(task_type)
        active = self.active()
        return Route(
            task_type=task_type,
            task=task,
            preset=active.name,
            preset_version=active.version,
            candidates=self.registry.candidates(active.name, task_type),
            stale=active.stale,
        )

    def active(self) -> ActivePreset:
        """The active preset, from the local cache or (after ``preset_cache_s``) from Redis."""
        with self._lock:
            now = self._clock()
            if self._known is not None and now < self._next_check:
                return self._known
            self._next_check = now + self.settings.preset_cache_s
            self.preset_reads += 1
            try:
                fresh = self.store.active()
            except StateUnavailable as exc:
                self._next_check = now + max(self.settings.preset_cache_s, OUTAGE_RETRY_S)
                return self._keep_last(exc)
            if fresh.name not in self.registry.presets:
                return self._keep_last(
                    StateUnavailable(
                        f"active preset {fresh.name!r} (version {fresh.version}) is not in "
                        f"registry {self.registry.source}; deploy the registry that defines it "
                        "or run `fleet preset use NAME`"
                    )
                )
            self._adopt(fresh)
            return fresh

    def _adopt(self, fresh: ActivePreset) -> None:
        if self._outage:
            log.warning(
                "preset_state_recovered preset=%s version=%d: routing on the shared preset again",
                fresh.name,
                fresh.version,
            )
            self._outage = False
        old = self._known
        if old is not None and old.version != fresh.version:
            log.info(
                "preset_changed from=%s@%d to=%s@%d by=%s",
                old.name,
                old.version,
                fresh.name,
                fresh.version,
                fresh.changed_by,
            )
        self._known = fresh

    def _keep_last(self, exc: StateUnavailable) -> ActivePreset:
        last = self._known
        if last is None:
            base = default_active(self.registry)
            what = f"no preset read yet, using registry default {base.name!r}"
        else:
            base = last
            what = f"keeping last known preset {base.name!r} version {base.version}"
        if not self._outage:
            log.warning(
                "preset_state_unavailable preset=%s version=%d stale=true: %s until Redis "
                "answers; error: %s",
                base.name,
                base.version,
                what,
                exc,
            )
            self._outage = True
        stale = base.model_copy(update={"stale": True})
        self._known = stale
        return stale


__all__ = ["OUTAGE_RETRY_S", "Route", "Router"]
