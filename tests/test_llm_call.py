"""llm_call over real HTTP to simulated providers, with the breaker on a real Redis."""

from __future__ import annotations

import logging

import pytest

from breaker_service.scope import Scope
from fleet.context import JobContext, job_scope
from fleet.errors import AllRoutesFailed, CallerError, ContextLengthExceeded, UnknownTaskType
from fleet.llm import FleetClient
from fleet.middleware import CallContext, LLMMiddleware
from fleet.registry import RouteSpec
from fleet.types import LLMResult
from tests.llm_fixtures import LocalFleet

MESSAGES = [{"role": "user", "content": "collect facts about circuit breakers"}]


def total(control: object) -> int:
    stats = control.stats()  # type: ignore[attr-defined]
    return int(stats["total_requests"])


def test_healthy_primary_answers_with_usage_and_cost(local_fleet: LocalFleet) -> None:
    result = local_fleet.client.llm_call("data_collection", MESSAGES, job_id="j1")
    model = local_fleet.registry().model("sim-primary/sim-small")
    assert result.model == "sim-primary/sim-small"
    assert result.provider == "sim-primary"
    assert result.preset == "local"
    assert not result.usage.estimated
    assert result.usage.prompt_tokens > 0 and result.usage.completion_tokens > 0
    assert result.cost_usd == pytest.approx(
        model.cost_usd(result.usage.prompt_tokens, result.usage.completion_tokens)
    )
    assert [a.outcome for a in result.attempts] == ["success"]
    assert result.attempts[0].breaker == "allow"
    assert total(local_fleet.primary) == 1 and total(local_fleet.backup) == 0


@pytest.mark.parametrize(
    ("mode", "outcome", "status"),
    [
        ("down", "failure", 503),
        ("rate_limited", "rate_limited", 429),
        ("garbage", "failure", 200),
        ("refuse", "failure", None),
        ("auth_fail", "credential", 401),
    ],
)
def test_fault_modes_map_to_outcome_and_fall_back(
    local_fleet: LocalFleet, mode: str, outcome: str, status: int | None
) -> None:
    local_fleet.primary.set_mode(mode)
    result = local_fleet.client.llm_call("data_collection", MESSAGES)
    assert result.model == "sim-backup/sim-tiny"
    first, second = result.attempts
    assert (first.model, first.outcome, first.status) == ("sim-primary/sim-small", outcome, status)
    assert second.outcome == "success"
    if mode == "rate_limited":
        assert first.retry_after_s is not None and first.retry_after_s > 0


def test_dead_primary_trips_its_breaker_and_stops_receiving_calls(
    local_fleet: LocalFleet,
) -> None:
    local_fleet.primary.set_mode("down")
    results = [local_fleet.client.llm_call("data_collection", MESSAGES) for _ in range(12)]
    assert all(r.model == "sim-backup/sim-tiny" for r in results)
    # consecutive_failures = 3: three requests reached the dead primary, then the breaker
    # rejected every later attempt without sending anything.
    assert local_fleet.primary.stats()["total_requests"] == 3
    assert [r.attempts[0].outcome for r in results[3:]] == ["rejected"] * 9
    assert all(r.attempts[0].breaker == "reject" for r in results[3:])
    snap = local_fleet.client.breaker.snapshot(Scope("sim-primary"))
    assert snap.state == "open"


def test_credential_failure_opens_at_once_and_names_the_env_var(
    local_fleet: LocalFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = local_fleet.registry()
    primary = registry.provider("sim-primary").model_copy(
        update={"kind": "openai", "api_key_env": "FLEET_TEST_PRIMARY_KEY"}
    )
    registry = registry.model_copy(
        update={"providers": {**registry.providers, "sim-primary": primary}}
    )
    monkeypatch.setenv("FLEET_TEST_PRIMARY_KEY", "sk-test-not-a-real-key")
    local_fleet.primary.set_mode("auth_fail")
    with FleetClient(local_fleet.settings, registry=registry) as client:
        first = client.llm_call("data_collection", MESSAGES)
        second = client.llm_call("data_collection", MESSAGES)
    assert first.attempts[0].outcome == "credential"
    assert "FLEET_TEST_PRIMARY_KEY" in first.attempts[0].detail
    assert second.attempts[0].outcome == "rejected"
    assert "credential" in second.attempts[0].detail
    assert local_fleet.primary.stats()["total_requests"] == 1


def test_context_length_refusal_is_the_callers_error_without_fallback(
    local_fleet: LocalFleet,
) -> None:
    local_fleet.primary.set_mode("context_length")
    with pytest.raises(ContextLengthExceeded) as info:
        local_fleet.client.llm_call("data_collection", MESSAGES)
    assert [a.outcome for a in info.value.attempts] == ["ignored"]
    assert local_fleet.backup.stats()["total_requests"] == 0
    snap = local_fleet.client.breaker.snapshot(Scope("sim-primary", "sim-small"))
    assert snap.failures == 0 and snap.calls == 0


def test_prompt_over_the_primary_window_skips_to_a_larger_backup(
    local_fleet: LocalFleet,
) -> None:
    registry = local_fleet.registry()
    local = registry.preset("local")
    routes = {
        **local.routes,
        "data_collection": RouteSpec(
            primary="sim-primary/sim-small", backups=["sim-backup/sim-medium"]
        ),
    }
    registry = registry.model_copy(
        update={
            "presets": {**registry.presets, "local": local.model_copy(update={"routes": routes})}
        }
    )
    with FleetClient(local_fleet.settings, registry=registry) as client:
        result = client.llm_call("data_collection", MESSAGES, max_tokens=10_000)
        with pytest.raises(ContextLengthExceeded, match="fit no model"):
            client.llm_call("data_collection", MESSAGES, max_tokens=20_000)
    assert result.model == "sim-backup/sim-medium"
    assert result.attempts[0].outcome == "skipped"
    assert "context window 8192" in result.attempts[0].detail
    assert local_fleet.primary.stats()["total_requests"] == 0


def test_every_key_missing_is_all_routes_failed_not_the_callers_prompt(
    local_fleet: LocalFleet,
) -> None:
    """A skip for configuration (no API key) is not a prompt that fits no model: the job
    must go to its failure policy, not be failed as the caller's fault."""
    registry = local_fleet.registry()
    providers = {
        name: registry.provider(name).model_copy(
            update={"kind": "openai", "api_key_env": f"FLEET_TEST_UNSET_{i}_KEY"}
        )
        for i, name in enumerate(("sim-primary", "sim-backup"))
    }
    registry = registry.model_copy(update={"providers": {**registry.providers, **providers}})
    with (
        FleetClient(local_fleet.settings, registry=registry) as client,
        pytest.raises(AllRoutesFailed) as info,
    ):
        client.llm_call("data_collection", MESSAGES)
    assert not isinstance(info.value, ContextLengthExceeded)
    assert [a.outcome for a in info.value.attempts] == ["skipped", "skipped"]
    assert all("FLEET_TEST_UNSET_" in a.detail for a in info.value.attempts)
    assert local_fleet.primary.stats()["total_requests"] == 0


def test_a_refused_argument_takes_no_step_number_of_the_job(local_fleet: LocalFleet) -> None:
    with job_scope(JobContext("e" * 32)) as job:
        with pytest.raises(CallerError, match="max_tokens must be >= 1"):
            local_fleet.client.llm_call("data_collection", MESSAGES, max_tokens=0)
        with pytest.raises(CallerError, match="timeout_s must be > 0"):
            local_fleet.client.llm_call("data_collection", MESSAGES, timeout_s=0)
        assert job.next_step() == 0  # steps stay aligned with a redelivery that passes
    assert local_fleet.primary.stats()["total_requests"] == 0


@pytest.mark.parametrize("mode", ["hang", "slow"])
def test_hung_or_slow_provider_is_cut_at_the_deadline(local_fleet: LocalFleet, mode: str) -> None:
    local_fleet.primary.set_mode(mode)
    result = local_fleet.client.llm_call("data_collection", MESSAGES, timeout_s=0.5)
    first = result.attempts[0]
    assert first.outcome == "failure"
    assert result.model == "sim-backup/sim-tiny"
    # Generous bound: catches a call held for the provider's whole delay, not scheduler noise.
    assert first.latency_ms < 0.5 * 1000 + 2000


def test_both_down_raises_all_routes_failed_with_history_and_retry_after(
    local_fleet: LocalFleet,
) -> None:
    local_fleet.primary.set_mode("down")
    local_fleet.backup.set_mode("down")
    with pytest.raises(AllRoutesFailed) as first:
        local_fleet.client.llm_call("data_collection", MESSAGES)
    assert [(a.provider, a.outcome, a.status) for a in first.value.attempts] == [
        ("sim-primary", "failure", 503),
        ("sim-backup", "failure", 503),
    ]
    for _ in range(3):  # trip both breakers (3 consecutive failures each)
        with pytest.raises(AllRoutesFailed):
            local_fleet.client.llm_call("data_collection", MESSAGES)
    with pytest.raises(AllRoutesFailed) as rejected:
        local_fleet.client.llm_call("data_collection", MESSAGES)
    assert [a.outcome for a in rejected.value.attempts] == ["rejected", "rejected"]
    assert rejected.value.retry_after_s is not None
    assert 0 < rejected.value.retry_after_s <= 5.0


def test_unknown_task_type_names_the_known_ones(local_fleet: LocalFleet) -> None:
    with pytest.raises(UnknownTaskType, match="data_collection"):
        local_fleet.client.llm_call("no_such_task", MESSAGES)


class CountingCache(LLMMiddleware):
    """A middleware that answers the second identical call from memory."""

    def __init__(self) -> None:
        self.results: dict[str, LLMResult] = {}
        self.attempts_seen = 0

    def before_call(self, ctx: CallContext) -> LLMResult | None:
        return self.results.get(str(ctx.job_id))

    def after_attempt(self, ctx: CallContext, attempt: object) -> None:
        self.attempts_seen += 1

    def after_call(self, ctx: CallContext, result: LLMResult) -> None:
        self.results[str(ctx.job_id)] = result


def test_middleware_can_short_circuit_a_call(local_fleet: LocalFleet) -> None:
    cache = CountingCache()
    with FleetClient(
        local_fleet.settings, registry=local_fleet.registry(), middleware=[cache]
    ) as client:
        first = client.llm_call("data_collection", MESSAGES, job_id="same")
        second = client.llm_call("data_collection", MESSAGES, job_id="same")
    assert second == first
    assert cache.attempts_seen == 1
    assert local_fleet.primary.stats()["total_requests"] == 1


def test_no_api_key_in_logs_errors_or_attempts(
    local_fleet: LocalFleet, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "sk-live-SECRET-4f9a8b7c6d5e"
    registry = local_fleet.registry()
    providers = {}
    for name in ("sim-primary", "sim-backup"):
        env = f"FLEET_TEST_{name.replace('-', '_').upper()}_KEY"
        monkeypatch.setenv(env, secret)
        providers[name] = registry.provider(name).model_copy(
            update={"kind": "openai", "api_key_env": env}
        )
    registry = registry.model_copy(update={"providers": {**registry.providers, **providers}})
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []
    with FleetClient(local_fleet.settings, registry=registry) as client:
        for mode in ("healthy", "down", "rate_limited", "auth_fail", "garbage", "context_length"):
            local_fleet.primary.set_mode(mode)
            local_fleet.backup.set_mode(mode)
            try:
                result = client.llm_call("classification", MESSAGES)
                seen.append(result.model_dump_json())
            except Exception as exc:  # every error path is checked for the key
                seen.append(repr(exc) + str(exc))
                seen.extend(a.model_dump_json() for a in getattr(exc, "attempts", []))
    assert seen
    assert secret not in caplog.text
    assert not [s for s in seen if secret in s]
