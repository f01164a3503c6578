"""Breaker policy: the thresholds and timings of one breaker scope.

Defaults live in the registry file's ``[breaker]`` table and can be overridden per provider
and per model (``[providers.X.breaker]``, ``[[models]] breaker = {...}``); a model scope uses
defaults <- provider override <- model override.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


class BreakerPolicy(BaseModel):
    """Trip, half-open and backoff rules of one breaker scope. Units are in the field names."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    window_ms: int = Field(30_000, ge=1_000, le=3_600_000, description="Sliding window length.")
    buckets: int = Field(10, ge=2, le=120, description="Time buckets in the window.")
    failure_rate_threshold: float = Field(
        0.5, gt=0, le=1, description="Trip when failures / calls in window >= this."
    )
    minimum_calls: int = Field(
        10, ge=1, description="Rate-based trips need at least this many calls in the window."
    )
    slow_call_ms: int = Field(30_000, ge=1, description="A call slower than this is slow.")
    slow_call_rate_threshold: float = Field(
        1.0, gt=0, le=1, description="Trip when slow calls / calls >= this (1.0 = only all slow)."
    )
    consecutive_failures: int = Field(
        5, ge=1, description="Fast trip after this many failures in a row (low traffic)."
    )
    half_open_max_probes: int = Field(1, ge=1, le=100, description="Concurrent probe leases N.")
    half_open_successes: int = Field(
        2, ge=1, le=100, description="Successful probes K that close the breaker."
    )
    probe_lease_ms: int = Field(
        30_000, ge=100, description="A probe lease expires after this (a killed prober frees it)."
    )
    open_base_ms: int = Field(5_000, ge=10, description="First open period.")
    backoff_factor: float = Field(2.0, ge=1, le=10, description="Open period growth per trip.")
    open_cap_ms: int = Field(300_000, ge=10, description="Longest open period.")
    jitter_ratio: float = Field(
        0.1, ge=0, le=1, description="Open period is extended by up to this fraction, at random."
    )
    suspect_cap: bool = Field(
        False,
        description=(
            "Opt-in. Once a closed scope has 1+ consecutive failures, admit at most as many "
            "calls at a time as failures still needed to trip (each holds a lease of "
            "probe_lease_ms); others are rejected with reason suspect_full. Off by default: "
            "it showed no gain in bench/outage_blast and sends traffic to backups after a "
            "single transient error."
        ),
    )

    @model_validator(mode="after")
    def _coherent(self) -> BreakerPolicy:
        if self.open_cap_ms < self.open_base_ms:
            raise ValueError(
                f"open_cap_ms ({self.open_cap_ms}) must be >= open_base_ms ({self.open_base_ms})"
            )
        if self.window_ms % self.buckets:
            raise ValueError(
                f"window_ms ({self.window_ms}) must be a multiple of buckets ({self.buckets})"
            )
        return self

    @property
    def bucket_ms(self) -> int:
        """Length of one time bucket."""
        return self.window_ms // self.buckets

    def open_ms_for(self, trips: int) -> int:
        """Open period before jitter after ``trips`` earlier trips: ``min(cap, base * f^trips)``."""
        return int(min(self.open_cap_ms, self.open_base_ms * self.backoff_factor ** max(trips, 0)))

    def ttl_ms(self) -> int:
        """PEXPIRE for a scope's state: window + longest open period + lease + 60 s margin."""
        return self.window_ms + self.open_cap_ms + self.probe_lease_ms + 60_000

    def merged(self, override: dict[str, Any] | None) -> BreakerPolicy:
        """This policy with ``override``'s fields replaced (validated)."""
        if not override:
            return self
        return BreakerPolicy.model_validate({**self.model_dump(), **override})
