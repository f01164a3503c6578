"""Sentry: init from settings, tagged breaker/escalation events, and no secret in any envelope.

Envelopes are captured by a Transport subclass (no network). Each test tears its client down,
so Sentry state never leaks into the next test.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sentry_sdk
from sentry_sdk.envelope import Envelope
from sentry_sdk.transport import Transport

from breaker_service.breaker import FleetBreaker, Permit
from breaker_service.outcomes import Outcome, OutcomeClass
from breaker_service.policy import BreakerPolicy
from breaker_service.scope import Scope
from breaker_service.store.memory import MemoryStore
from fleet.escalation import EscalationEntry
from fleet.sentry import (
    SentryBreakerListener,
    init_sentry,
    registry_key_envs,
    report_escalation,
    secret_values,
)
from fleet.settings import FleetSettings
from fleet.types import Attempt

DSN = "https://publickey@127.0.0.1/1"
SECRET = "sk-planted-secret-0123456789"
OTHER_SECRET = "tok-another-planted-value-42"


class CapturingTransport(Transport):
    """Keeps every envelope the SDK would have sent."""

    def __init__(self) -> None:
        super().__init__(None)
        self.envelopes: list[Envelope] = []

    def capture_envelope(self, envelope: Envelope) -> None:
        self.envelopes.append(envelope)

    def events(self) -> list[dict[str, Any]]:
        found = []
        for envelope in self.envelopes:
            for item in envelope.items:
                if item.type == "event" and item.payload.json is not None:
                    found.append(item.payload.json)
        return found

    def raw(self) -> bytes:
        return b"".join(envelope.serialize() for envelope in self.envelopes)


@pytest.fixture
def transport() -> Iterator[CapturingTransport]:
    assert not sentry_sdk.get_client().is_active(), "a previous test leaked its Sentry client"
    capture = CapturingTransport()
    yield capture
    sentry_sdk.get_client().close()
    sentry_sdk.get_global_scope().set_client(None)
    sentry_sdk.get_isolation_scope().clear()
    sentry_sdk.get_current_scope().clear()


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch) -> FleetSettings:
    monkeypatch.setenv("SAMBANOVA_API_KEY", SECRET)  # a registry api_key_env
    monkeypatch.setenv("MY_SERVICE_TOKEN", OTHER_SECRET)  # caught by the name pattern
    return FleetSettings.load(sentry_dsn=DSN, worker_id="host:1")


def entry(detail: str = "") -> EscalationEntry:
    return EscalationEntry(
        id="e000000000001",
        job_id="job-1",
        job={"job_id": "job-1", "queue": "celery", "task_type": "gap_analysis", "agent": "seo"},
        reason="all_routes_failed",
        policy="escalate",
        task_type="gap_analysis",
        queue="celery",
        providers=["sim-primary", "sim-backup"],
        scopes=["sim-primary", "sim-backup", "sim-primary/m", "sim-backup/m"],
        attempts=[
            Attempt(
                model="sim-primary/m", provider="sim-primary", outcome="failure", detail=detail
            ),
            Attempt(model="sim-backup/m", provider="sim-backup", outcome="rejected"),
        ],
        created_at=1.0,
        replay_count=0,
        status="open",
    )


def test_no_dsn_means_no_sentry(transport: CapturingTransport) -> None:
    assert init_sentry(FleetSettings.load(sentry_dsn=None), transport=transport) is False
    assert not sentry_sdk.get_client().is_active()
    report_escalation(entry())
    assert transport.envelopes == []


def test_breaker_transitions_are_events_with_tags(
    transport: CapturingTransport, settings: FleetSettings
) -> None:
    assert init_sentry(settings, transport=transport) is True
    assert sentry_sdk.get_client().get_integration("celery") is not None
    policy = BreakerPolicy(consecutive_failures=2, minimum_calls=100, jitter_ratio=0.0)
    breaker = FleetBreaker(
        MemoryStore(clock_ms=lambda: 0),
        lambda scope: policy,
        worker_id="host:1",
        listeners=[SentryBreakerListener()],
    )
    try:
        for _ in range(2):
            permit = breaker.acquire([Scope("sim-primary", "m")])
            assert isinstance(permit, Permit)
            breaker.record(permit, Outcome(OutcomeClass.FAILURE))
    finally:
        breaker.close()
    events = transport.events()
    assert events, "the trip sent no event"
    tags = {event["tags"]["breaker.scope"]: event["tags"] for event in events}
    assert set(tags) == {"sim-primary/m"}
    model = tags["sim-primary/m"]
    assert model["breaker.trigger"] == "consecutive"
    assert (model["breaker.from_state"], model["breaker.to_state"]) == ("closed", "open")
    assert model["breaker.threshold"] == "2"
    assert model["breaker.value"] == "2"
    assert model["breaker.provider"] == "sim-primary"
    assert all(event["level"] == "warning" for event in events)


def test_escalations_are_events_with_tags(
    transport: CapturingTransport, settings: FleetSettings
) -> None:
    init_sentry(settings, transport=transport)
    event_id = report_escalation(entry())
    [event] = transport.events()
    assert event["event_id"] == event_id
    assert event["tags"]["task_type"] == "gap_analysis"
    assert event["tags"]["reason"] == "all_routes_failed"
    assert event["tags"]["policy"] == "escalate"
    assert event["tags"]["provider"] == "sim-primary"
    assert event["contexts"]["escalation"]["job_id"] == "job-1"
    assert len(event["contexts"]["escalation"]["attempts"]) == 2


def test_planted_secrets_never_appear_in_any_envelope(
    transport: CapturingTransport, settings: FleetSettings
) -> None:
    init_sentry(settings, transport=transport)
    # 1. an escalation whose attempt detail quotes the key
    report_escalation(entry(detail=f"401 for key {SECRET}"))
    # 2. an exception whose message carries an Authorization header, with the key in a local
    api_key = SECRET
    try:
        raise RuntimeError(f"request failed; headers: Authorization: Bearer {api_key}")
    except RuntimeError:
        sentry_sdk.capture_exception()
    # 3. an error log (the logging integration) and a breadcrumb with both secrets
    sentry_sdk.add_breadcrumb(message=f"calling with {OTHER_SECRET}", data={"api_key": SECRET})
    logging.getLogger("fleet.test").error("provider said no to %s", SECRET)
    # 4. secret-named fields in extra data
    sentry_sdk.capture_message(
        "with extras", extras={"headers": {"Authorization": "Basic abcdefgh", "x-api-key": "k"}}
    )
    raw = transport.raw()
    assert len(transport.events()) == 4
    assert b"[Filtered]" in raw
    assert SECRET.encode() not in raw
    assert OTHER_SECRET.encode() not in raw
    assert b"abcdefgh" not in raw
    assert b"request failed" in raw  # the message itself still arrives


def test_secret_values_cover_registry_env_names_and_redis_passwords(tmp_path: Path) -> None:
    registry = tmp_path / "registry.toml"
    registry.write_text('[providers.acme]\nkind = "openai"\napi_key_env = "ACME_KEY_VAR"\n')
    settings = FleetSettings.load(
        redis_url="redis://:hunter2-redis@127.0.0.1:6390/0", registry_path=registry
    )
    names = registry_key_envs(settings)
    assert names == {"ACME_KEY_VAR"}
    found = secret_values(
        settings,
        environ={"ACME_KEY_VAR": "acme-secret-1", "HOME": "/root", "X_API_KEY": "short"},
        key_envs=names,
    )
    assert found == {"acme-secret-1", "hunter2-redis"}
    assert "SAMBANOVA_API_KEY" in registry_key_envs(FleetSettings.load())


def test_parked_escalations_reach_sentry_when_enabled(
    transport: CapturingTransport, settings: FleetSettings, redis_url: str
) -> None:
    from fleet.escalation import EscalationQueue
    from fleet.redis_client import make_redis

    on_redis = FleetSettings.load(redis_url=redis_url, namespace="test")
    client = make_redis(on_redis)
    try:
        queue = EscalationQueue(on_redis, client, lambda job: None)
        attempt = Attempt(model="sim-backup/m", provider="sim-backup", outcome="failure")
        parked = queue.park(
            job={"job_id": "j1"}, reason="all_routes_failed", policy="escalate",
            task_type="summary", attempts=[attempt], queue="celery",
        )  # fmt: skip
        assert transport.events() == []  # Sentry off: nothing sent
        init_sentry(settings, transport=transport)
        queue.park(
            job={"job_id": "j2"}, reason="redeliveries_exhausted", policy="escalate",
            task_type="summary", attempts=[attempt], queue="celery",
        )  # fmt: skip
        [event] = transport.events()
        assert event["tags"]["reason"] == "redeliveries_exhausted"
        assert event["tags"]["provider"] == "sim-backup"
        assert event["contexts"]["escalation"]["job_id"] == "j2"
        assert parked.id != event["contexts"]["escalation"]["entry_id"]
    finally:
        client.close()
