"""The classification table of breaker_service.outcomes, row by row (DESIGN.md section 3)."""

from __future__ import annotations

import dataclasses

import pytest

from breaker_service.outcomes import (
    CALLER_FAULT_STATUSES,
    CREDENTIAL_STATUSES,
    Outcome,
    OutcomeClass,
    classify,
)

S, F, R, C, IG = (
    OutcomeClass.SUCCESS,
    OutcomeClass.FAILURE,
    OutcomeClass.RATE_LIMITED,
    OutcomeClass.CREDENTIAL,
    OutcomeClass.IGNORED,
)

STATUS_TABLE = [
    (200, S),
    (201, S),
    (204, S),
    (299, S),
    (429, R),
    (401, C),
    (403, C),
    (400, IG),
    (404, IG),
    (405, IG),
    (409, IG),
    (413, IG),
    (415, IG),
    (422, IG),
    (500, F),
    (502, F),
    (503, F),
    (504, F),
    (599, F),
    (408, F),  # request timeout: the provider's side
    (402, F),  # payment required: a backup on another provider may not share it
    (451, F),
    (301, F),  # a redirect is not a usable answer (no hidden follow)
    (100, F),
]


@pytest.mark.parametrize(("status", "expected"), STATUS_TABLE)
def test_status_table(status: int, expected: OutcomeClass) -> None:
    assert classify(status=status) is expected


@pytest.mark.parametrize("error", ["timeout", "connect", "reset", "protocol"])
def test_transport_errors_count_as_failures(error: str) -> None:
    assert classify(transport_error=error) is F  # type: ignore[arg-type]


def test_status_sets_match_the_table() -> None:
    assert {s for s, c in STATUS_TABLE if c is C} == set(CREDENTIAL_STATUSES)
    assert {s for s, c in STATUS_TABLE if c is IG} == set(CALLER_FAULT_STATUSES)


@pytest.mark.parametrize(
    ("cls", "counts"), [(S, False), (F, True), (R, True), (C, True), (IG, False)]
)
def test_counts_as_failure(cls: OutcomeClass, counts: bool) -> None:
    assert cls.counts_as_failure is counts


def test_ignored_is_not_a_success() -> None:
    assert IG is not S
    assert not IG.counts_as_failure
    assert str(IG) == "ignored"


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"status": 200, "transport_error": "timeout"}],
)
def test_exactly_one_input_required(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        classify(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("status", [600, 999])
def test_out_of_range_status_from_a_rogue_server_counts(status: int) -> None:
    # a misbehaving server or proxy is the provider's side: count it, never crash the caller
    assert classify(status=status) is F


def test_outcome_is_frozen_with_defaults() -> None:
    out = Outcome(OutcomeClass.RATE_LIMITED, retry_after_ms=2_000, status=429)
    assert (out.latency_ms, out.detail) == (0.0, "")
    with pytest.raises(dataclasses.FrozenInstanceError):
        out.status = 500  # type: ignore[misc]
