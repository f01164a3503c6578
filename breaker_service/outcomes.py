"""Outcome classes of a protected call, and the explicit table that classifies them.

The table (DESIGN.md section 3) is data, so tests can walk it and docs can print it:

=============================================  ==============  =================================
provider answer                                class           breaker effect
=============================================  ==============  =================================
2xx with a parseable body                      SUCCESS         counts as a success
429 Too Many Requests                          RATE_LIMITED    counts as a failure; opens for at
                                                               least Retry-After when it trips
5xx, timeout, connect refused, reset,          FAILURE         counts as a failure
unparseable 2xx body
401, 403                                       CREDENTIAL      trips at once; stays open until an
                                                               operator resets it
400, 404, 413, 422, context length,            IGNORED         the caller's fault: not counted,
content policy                                                 not a success, no fallback
=============================================  ==============  =================================
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal


class OutcomeClass(StrEnum):
    """How one call's outcome counts against its breaker scopes."""

    SUCCESS = "success"
    FAILURE = "failure"
    RATE_LIMITED = "rate_limited"
    CREDENTIAL = "credential"
    IGNORED = "ignored"

    @property
    def counts_as_failure(self) -> bool:
        """True for outcomes that count against the provider in the failure window."""
        return self in (OutcomeClass.FAILURE, OutcomeClass.RATE_LIMITED, OutcomeClass.CREDENTIAL)


TransportError = Literal["timeout", "connect", "reset", "protocol"]
"""A call that got no usable HTTP answer: deadline hit, refused, dropped, or unparseable."""

CALLER_FAULT_STATUSES = frozenset({400, 404, 405, 409, 413, 415, 422})
CREDENTIAL_STATUSES = frozenset({401, 403})


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a protected call reports to the breaker.

    ``latency_ms`` is measured by the caller with a monotonic clock (only durations come from
    workers). ``retry_after_ms`` carries a provider's Retry-After on 429/503.
    """

    cls: OutcomeClass
    latency_ms: float = 0.0
    retry_after_ms: int | None = None
    status: int | None = None
    detail: str = ""


def classify(
    *, status: int | None = None, transport_error: TransportError | None = None
) -> OutcomeClass:
    """Classify a provider answer: an HTTP ``status``, or a ``transport_error`` when none came.

    Exactly one of the two must be given. Context-length and content-policy refusals arrive as
    4xx statuses and classify as IGNORED.
    """
    if (status is None) == (transport_error is None):
        raise ValueError("classify() takes exactly one of status= or transport_error=")
    if transport_error is not None:
        return OutcomeClass.FAILURE
    assert status is not None
    if 200 <= status < 300:
        return OutcomeClass.SUCCESS
    if status == 429:
        return OutcomeClass.RATE_LIMITED
    if status in CREDENTIAL_STATUSES:
        return OutcomeClass.CREDENTIAL
    if status in CALLER_FAULT_STATUSES:
        return OutcomeClass.IGNORED
    # 5xx and 408 are the provider failing. Any other 4xx (e.g. 402 payment required, 451) is
    # a property of the request or account that a backup on another provider may not share:
    # count it too, so the route moves on.
    return OutcomeClass.FAILURE
