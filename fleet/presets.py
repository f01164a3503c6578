"""The fleet-wide active preset, kept in Redis, versioned and audited.

Keys (namespace from :class:`~fleet.settings.FleetSettings`):

- ``<ns>:preset:active`` — one hash: ``name``, ``version``, ``changed_at``, ``changed_by``,
  ``reason``. Readers need a single ``HGETALL``; :class:`fleet.routing.Router` caches it.
- ``<ns>:preset:history`` — a list of JSON :class:`ActivePreset` records, newest first,
  trimmed to :data:`HISTORY_MAX`.

A switch (:meth:`PresetStore.use`) validates the preset (it exists, and the API-key variables
of the providers it routes to are set), then writes both keys in one ``MULTI`` under
``WATCH``, so concurrent switches get distinct, increasing versions and never lose history.
Timestamps come from the Redis server clock (``TIME``), the same clock for every machine.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any, cast

import redis
from pydantic import BaseModel, ConfigDict, ValidationError

from fleet.errors import MissingCredential, StateUnavailable
from fleet.registry import Registry
from fleet.settings import FleetSettings

log = logging.getLogger("fleet.presets")

HISTORY_MAX = 1000
_SWITCH_RETRIES = 20


class ActivePreset(BaseModel):
    """The preset the fleet routes on, with its version and who switched to it, when and why.

    ``version`` 0 means "never switched: the registry's ``default_preset``". ``stale`` is True
    when a reader could not reach Redis and reports the last value it knew.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    version: int
    changed_at: float
    changed_by: str
    reason: str = ""
    stale: bool = False


def default_active(registry: Registry) -> ActivePreset:
    """The state before any switch: the registry's ``default_preset`` at version 0."""
    return ActivePreset(
        name=registry.default_preset,
        version=0,
        changed_at=0.0,
        changed_by="registry default",
        reason=f"default_preset of {registry.source}",
    )


def _decode(raw: Mapping[bytes, bytes]) -> ActivePreset:
    fields = {k.decode(): v.decode() for k, v in raw.items()}
    return ActivePreset.model_validate(fields)


class PresetStore:
    """Read and switch the fleet-wide active preset (see the module docstring for the keys).

    Every Redis error is converted to :class:`~fleet.errors.StateUnavailable`; nothing here
    ever reports a default while Redis is down.
    """

    def __init__(self, settings: FleetSettings, redis: redis.Redis, registry: Registry) -> None:
        self.settings = settings
        self.redis = redis
        self.registry = registry
        self.active_key = settings.key("preset", "active")
        self.history_key = settings.key("preset", "history")

    def active(self) -> ActivePreset:
        """The active preset (one ``HGETALL``); the registry default (version 0) if never set."""
        try:
            raw = cast(dict[bytes, bytes], self.redis.hgetall(self.active_key))
        except redis.RedisError as exc:
            raise StateUnavailable(
                f"cannot read the active preset from Redis ({self.active_key}): {exc}"
            ) from exc
        if not raw:
            return default_active(self.registry)
        try:
            return _decode(raw)
        except (ValidationError, UnicodeDecodeError) as exc:
            raise StateUnavailable(
                f"active preset record {self.active_key} is corrupt ({exc}); "
                "run `fleet preset use NAME` to rewrite it"
            ) from exc

    def use(
        self,
        name: str,
        *,
        actor: str,
        reason: str = "",
        environ: Mapping[str, str] | None = None,
        check_credentials: bool = True,
    ) -> ActivePreset:
        """Switch the whole fleet to preset ``name`` and record who did it, when and why.

        Validates first: an unknown name raises :class:`~fleet.errors.PresetError`; an unset
        API-key variable of a provider the preset routes to raises
        :class:`~fleet.errors.MissingCredential` (checked in ``environ``, default
        ``os.environ``; pass ``check_credentials=False`` when the keys live only on workers).
        Raises :class:`~fleet.errors.StateUnavailable` when Redis does not answer.
        """
        self.registry.preset(name)
        if check_credentials:
            missing = self.registry.missing_credentials(
                name, os.environ if environ is None else environ
            )
            if missing:
                raise MissingCredential(f"preset {name!r} cannot be used here", missing)
        try:
            record = self._switch(name, actor, reason)
        except redis.RedisError as exc:
            raise StateUnavailable(f"cannot switch the preset in Redis: {exc}") from exc
        log.warning(
            "preset_switched preset=%s version=%d actor=%s reason=%r",
            record.name,
            record.version,
            actor,
            reason,
        )
        return record

    def _switch(self, name: str, actor: str, reason: str) -> ActivePreset:
        for _ in range(_SWITCH_RETRIES):
            with self.redis.pipeline(transaction=True) as pipe:
                try:
                    pipe.watch(self.active_key)  # type: ignore[no-untyped-call]
                    current = cast(bytes | None, pipe.hget(self.active_key, "version"))
                    seconds, micros = cast(tuple[int, int], pipe.time())
                    record = ActivePreset(
                        name=name,
                        version=int(current or 0) + 1,
                        changed_at=seconds + micros / 1e6,
                        changed_by=actor,
                        reason=reason,
                    )
                    pipe.multi()
                    fields = record.model_dump(exclude={"stale"})
                    pipe.hset(self.active_key, mapping={k: str(v) for k, v in fields.items()})
                    pipe.lpush(self.history_key, record.model_dump_json(exclude={"stale"}))
                    pipe.ltrim(self.history_key, 0, HISTORY_MAX - 1)
                    pipe.execute()
                    return record
                except redis.WatchError:
                    continue
        raise StateUnavailable(
            f"preset switch lost {_SWITCH_RETRIES} races in a row on {self.active_key}; retry"
        )

    def history(self, limit: int = 20) -> list[ActivePreset]:
        """The last ``limit`` switches, newest first (empty when nobody ever switched)."""
        try:
            raw = cast(list[Any], self.redis.lrange(self.history_key, 0, max(limit, 1) - 1))
        except redis.RedisError as exc:
            raise StateUnavailable(f"cannot read preset history {self.history_key}: {exc}") from exc
        return [ActivePreset.model_validate_json(item) for item in raw]


__all__ = ["HISTORY_MAX", "ActivePreset", "PresetStore", "default_active"]
