"""Exceptions raised by the ``fleet`` package.

Every exception derives from :class:`FleetError`, so ``except FleetError`` catches all of
them. The tree::

    FleetError
    ├── ConfigError                 settings or registry invalid (lists every problem)
    │   ├── RegistryError           the TOML registry failed validation
    │   ├── UnknownTaskType         a task type that no task profile declares
    │   ├── PresetError             unknown preset, or a switch that would not validate
    │   └── MissingCredential       the env var holding a provider's API key is unset
    ├── CallerError                 the request is at fault; never counts against a provider,
    │   │                           never falls back to a backup
    │   ├── ContextLengthExceeded   prompt + max_tokens do not fit any model of the route
    │   └── ContentPolicyViolation  the provider refused the content
    ├── AllRoutesFailed             primary and every backup failed or were rejected
    ├── BudgetExceeded              a token / spend / retry budget would be overrun
    ├── RetryLater                  control flow: come back after ``delay_s``
    ├── SubmitError                 a job was refused at submit; nothing was queued
    ├── JobNotFound                 no job record with that id
    ├── JobFailed                   a job ended failed, escalated or cancelled (JobHandle.result)
    ├── JobPending                  a job has not reached a terminal state yet
    ├── EscalationNotFound          no escalation entry with that id
    ├── EscalationConflict          the entry's status forbids the operation (e.g. requeue resolved)
    ├── StateUnavailable            Redis (job/preset state) did not answer
    └── ProviderError               one provider request failed (status, class, Retry-After)

Breaker errors live in :mod:`breaker_service.errors`; driver errors (redis, httpx) are
converted at the boundary and chained with ``raise ... from exc``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fleet.types import Attempt


class FleetError(Exception):
    """Root of every exception raised by agent-fleet's ``fleet`` package."""


class ConfigError(FleetError):
    """Configuration is invalid. ``problems`` lists every problem found, not just the first."""

    def __init__(self, message: str, problems: Sequence[str] = ()) -> None:
        self.problems: list[str] = list(problems)
        text = message
        if self.problems:
            text += "\n" + "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(text)


class RegistryError(ConfigError):
    """The model registry file failed validation."""


class UnknownTaskType(ConfigError):
    """A task type that no task profile of the registry declares."""


class PresetError(ConfigError):
    """An unknown preset, or a preset that does not validate against the registry."""


class MissingCredential(ConfigError):
    """The environment variable that holds a provider's API key is not set."""


class CallerError(FleetError):
    """The request itself is at fault (HTTP 400 and friends).

    It never counts against the provider's breaker and never falls back to a backup: the same
    request would fail there too. ``attempts`` holds what was tried before the refusal.
    """

    def __init__(self, message: str, attempts: Sequence[Attempt] = ()) -> None:
        self.attempts: list[Attempt] = list(attempts)
        super().__init__(message)


class ContextLengthExceeded(CallerError):
    """The prompt plus ``max_tokens`` fit no model of the route."""


class ContentPolicyViolation(CallerError):
    """The provider refused the content."""


class AllRoutesFailed(FleetError):
    """Every model of the route (primary and backups) failed or was rejected by its breaker.

    ``attempts`` is the full history; ``retry_after_s`` is the earliest moment (seconds from
    now) at which a rejecting breaker will let a call through again, or ``None`` when no
    breaker rejected (every candidate was called and failed).
    """

    def __init__(
        self,
        task_type: str,
        attempts: Sequence[Attempt],
        retry_after_s: float | None,
    ) -> None:
        self.task_type = task_type
        self.attempts: list[Attempt] = list(attempts)
        self.retry_after_s = retry_after_s
        tried = ", ".join(f"{a.model}@{a.provider}={a.outcome}" for a in self.attempts) or "none"
        hint = f"; retry after {retry_after_s:.1f}s" if retry_after_s is not None else ""
        super().__init__(f"all routes failed for task type {task_type!r}: {tried}{hint}")


class BudgetExceeded(FleetError):
    """A token, spend or retry budget would be overrun by the next call."""


class RetryLater(FleetError):
    """Control flow: the work should be retried after ``delay_s`` seconds."""

    def __init__(self, delay_s: float, reason: str = "") -> None:
        self.delay_s = delay_s
        self.reason = reason
        super().__init__(f"retry in {delay_s:.1f}s" + (f": {reason}" if reason else ""))


class SubmitError(FleetError):
    """A job was refused at submit time. Nothing was queued. The message names the field."""


class JobNotFound(FleetError):
    """No job record exists with that id."""


class JobFailed(FleetError):
    """A job ended ``failed``, ``escalated`` or ``cancelled``; ``error`` says why."""

    def __init__(self, job_id: str, state: str, error: str | None) -> None:
        self.job_id = job_id
        self.state = state
        self.error = error
        super().__init__(f"job {job_id} ended {state}: {error or 'no error recorded'}")


class JobPending(FleetError):
    """A job has not reached a terminal state yet; wait for it (``JobHandle.wait``)."""


class EscalationNotFound(FleetError):
    """No escalation entry exists with that id."""


class EscalationConflict(FleetError):
    """The escalation entry's status forbids the operation (e.g. requeue a resolved entry)."""


class StateUnavailable(FleetError):
    """Redis holding job, preset or escalation state did not answer."""


class ProviderError(FleetError):
    """One provider request failed. Raised by :mod:`fleet.providers` clients.

    ``outcome`` is the breaker outcome class from :func:`breaker_service.outcomes.classify`;
    ``status`` the HTTP status (None when no answer came); ``transport_error`` one of
    ``timeout``/``connect``/``reset``/``protocol``; ``retry_after_s`` the provider's
    Retry-After; ``caller_fault`` ``context_length``/``content_policy``/``bad_request`` for
    requests at fault. The message never contains an API key.
    """

    def __init__(
        self,
        message: str,
        *,
        outcome: str,
        status: int | None = None,
        transport_error: str | None = None,
        retry_after_s: float | None = None,
        caller_fault: str | None = None,
        latency_ms: float = 0.0,
    ) -> None:
        self.outcome = outcome
        self.status = status
        self.transport_error = transport_error
        self.retry_after_s = retry_after_s
        self.caller_fault = caller_fault
        self.latency_ms = latency_ms
        super().__init__(message)
