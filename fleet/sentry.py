"""Sentry for agent-fleet: breaker transitions and escalations as tagged events, no secrets.

Call :func:`init_sentry` once per process (workers do it at start); it is a no-op returning
False unless ``FLEET_SENTRY_DSN`` is set. Then:

- :class:`SentryBreakerListener` (a breaker listener) sends every transition this process
  caused, tagged ``breaker.scope``, ``breaker.trigger``, ``breaker.from_state``,
  ``breaker.to_state``, ``breaker.threshold``, ``breaker.value``;
- :func:`report_escalation` sends an escalated job, tagged ``task_type``, ``reason``,
  ``policy``, ``provider``.

Every event passes :func:`scrub_event` before it leaves the process: values of API-key
environment variables (the registry's ``api_key_env`` names, plus any ``*_API_KEY``,
``*_TOKEN``, ``*_SECRET``, ``*_PASSWORD`` variable), ``Authorization``/``api-key`` style
fields, bearer tokens and Redis URL passwords are replaced by ``[Filtered]``. Local variables
are never attached to stack frames.
"""

from __future__ import annotations

import logging
import os
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

import sentry_sdk
from sentry_sdk.transport import Transport

from breaker_service.listeners import BreakerListener, TransitionSource
from fleet.registry_validate import SHIPPED
from fleet.settings import FleetSettings

if TYPE_CHECKING:
    from breaker_service.store.base import Transition
    from fleet.escalation import EscalationEntry

log = logging.getLogger(__name__)

FILTERED = "[Filtered]"
_SECRET_ENV = re.compile(r"(API_?KEY|TOKEN|SECRET|PASSWORD|PASSWD)$", re.IGNORECASE)
_SECRET_FIELD = re.compile(
    r"^(authorization|proxy-authorization|x-api-key|api[-_]?key|.*_api_key|token|secret|"
    r"password|passwd|cookie|set-cookie)$",
    re.IGNORECASE,
)
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{6,}")
_MIN_SECRET_LEN = 6  # shorter values would blank out ordinary words


def registry_key_envs(settings: FleetSettings) -> set[str]:
    """The ``api_key_env`` names of every provider in the registry file (read as plain TOML,
    so a registry that fails validation or lacks a key still yields its names)."""
    path = settings.registry_path or SHIPPED
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        log.warning(
            "sentry scrubber: registry %s unreadable (%s); env-name patterns only", path, exc
        )
        return set()
    providers = data.get("providers", {})
    return {
        str(p["api_key_env"])
        for p in providers.values()
        if isinstance(p, dict) and p.get("api_key_env")
    }


def secret_values(
    settings: FleetSettings,
    *,
    environ: Mapping[str, str] | None = None,
    key_envs: Iterable[str] = (),
) -> set[str]:
    """Values that must never leave the process: API keys from the environment and passwords
    in the Redis URLs. ``key_envs`` adds variable names (e.g. the registry's ``api_key_env``)."""
    env = os.environ if environ is None else environ
    names = {name for name in env if _SECRET_ENV.search(name)} | set(key_envs)
    values = {env[name] for name in names if len(env.get(name) or "") >= _MIN_SECRET_LEN}
    for url in (settings.redis_url, settings.broker_url):
        password = urlsplit(url).password if url else None
        if password:
            values.add(password)
    return values


def _scrub_text(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, FILTERED)
    return _BEARER.sub(lambda m: f"{m.group(1)} {FILTERED}", text)


def _scrub(value: Any, secrets: Iterable[str]) -> Any:
    if isinstance(value, str):
        return _scrub_text(value, secrets)
    if isinstance(value, Mapping):
        return {
            k: FILTERED if isinstance(k, str) and _SECRET_FIELD.match(k) else _scrub(v, secrets)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        # Header lists come as [name, value] pairs.
        if len(value) == 2 and isinstance(value[0], str) and _SECRET_FIELD.match(value[0]):
            return [value[0], FILTERED]
        return [_scrub(item, secrets) for item in value]
    return value


def scrub_event(event: Mapping[str, Any], secrets: Iterable[str]) -> dict[str, Any]:
    """A copy of a Sentry event with every secret value and secret-named field filtered."""
    ordered = sorted(set(secrets), key=len, reverse=True)  # longest first: no partial leaks
    scrubbed: dict[str, Any] = _scrub(event, ordered)
    return scrubbed


def make_before_send(secrets: Iterable[str]) -> Callable[[Any, Any], Any]:
    """A Sentry ``before_send`` / ``before_breadcrumb`` hook that scrubs ``secrets``."""
    frozen = tuple(secrets)

    def before_send(event: Any, hint: Any) -> Any:
        return scrub_event(event, frozen)

    return before_send


def init_sentry(settings: FleetSettings, *, transport: Transport | None = None) -> bool:
    """Initialise sentry-sdk from ``settings.sentry_dsn`` (``FLEET_SENTRY_DSN``).

    Returns False (and does nothing) when no DSN is set. Installs the Celery integration,
    the secret scrubber on events and breadcrumbs, and never attaches local variables or
    request bodies. ``transport`` replaces the HTTP transport (tests capture envelopes).
    """
    if not settings.sentry_dsn:
        return False
    from sentry_sdk.integrations.celery import CeleryIntegration  # noqa: PLC0415 - optional

    secrets = secret_values(settings, key_envs=registry_key_envs(settings))
    scrubber = make_before_send(secrets)
    sentry_sdk.init(
        dsn=settings.sentry_dsn,
        transport=transport,
        integrations=[CeleryIntegration()],
        before_send=scrubber,
        before_breadcrumb=scrubber,
        include_local_variables=False,
        max_request_body_size="never",
        server_name=settings.worker_id,
    )
    log.info("sentry enabled worker=%s secrets_scrubbed=%d", settings.worker_id, len(secrets))
    return True


def _tags(values: Mapping[str, object]) -> dict[str, str]:
    return {
        k: (f"{v:g}" if isinstance(v, float) else str(v))[:200]
        for k, v in values.items()
        if v is not None and v != ""
    }


class SentryBreakerListener(BreakerListener):
    """Sends each breaker transition (and losing Redis) to Sentry as one tagged event.

    Transitions to ``closed`` are ``info``; trips and operator actions ``warning``. The
    fingerprint groups events per scope and direction, so one flapping provider is one issue.
    """

    def on_transition(self, transition: Transition, *, source: TransitionSource) -> None:
        """Send ``breaker <scope> <from> -> <to> (<trigger>)`` with its tags."""
        scope = str(transition.scope)
        level: Literal["info", "warning"] = "info" if transition.to_state == "closed" else "warning"
        sentry_sdk.capture_message(
            f"breaker {scope} {transition.from_state} -> {transition.to_state} "
            f"({transition.trigger}: {transition.value} vs threshold {transition.threshold})",
            level=level,
            tags=_tags(
                {
                    "breaker.scope": scope,
                    "breaker.provider": transition.scope.provider,
                    "breaker.trigger": transition.trigger,
                    "breaker.from_state": transition.from_state,
                    "breaker.to_state": transition.to_state,
                    "breaker.threshold": transition.threshold,
                    "breaker.value": transition.value,
                    "breaker.source": source,
                }
            ),
            fingerprint=["breaker", scope, transition.to_state],
        )

    def on_store_unavailable(self, error: BaseException, *, fallback: str) -> None:
        """Send that the breaker lost Redis and which fallback decides now."""
        sentry_sdk.capture_message(
            f"breaker store unavailable, fallback {fallback}: {type(error).__name__}",
            level="error",
            tags=_tags({"breaker.fallback": fallback}),
            fingerprint=["breaker", "store_unavailable"],
        )


def report_escalation(entry: EscalationEntry) -> str | None:
    """Send one escalated job to Sentry; returns the event id (None when Sentry is off).

    Tags: ``task_type``, ``reason``, ``policy``, ``provider`` (the first provider tried),
    ``providers``. The job payload is not sent, only its id and the attempt history.
    """
    attempts = [
        {
            "model": a.model,
            "outcome": a.outcome,
            "status": a.status,
            "breaker": a.breaker,
            "detail": a.detail,
        }
        for a in entry.attempts
    ]
    return sentry_sdk.capture_message(
        f"job {entry.job_id} escalated ({entry.reason}) for task type {entry.task_type}",
        level="warning",
        tags=_tags(
            {
                "task_type": entry.task_type,
                "reason": entry.reason,
                "policy": entry.policy,
                "provider": entry.providers[0] if entry.providers else None,
                "providers": ",".join(entry.providers),
                "queue": entry.queue,
            }
        ),
        contexts={
            "escalation": {
                "entry_id": entry.id,
                "job_id": entry.job_id,
                "replay_count": entry.replay_count,
                "attempts": attempts,
            }
        },
        fingerprint=["escalation", entry.task_type, entry.reason],
    )
