"""Auto-replay: a real FleetBreaker (memory store, injected clock) closing again requeues the
escalations its scope caused, for task types that opted in, once, oldest first."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest
import redis

from breaker_service.breaker import FleetBreaker, Permit
from breaker_service.outcomes import Outcome, OutcomeClass
from breaker_service.policy import BreakerPolicy
from breaker_service.scope import Scope
from breaker_service.store.base import Transition
from breaker_service.store.memory import MemoryStore
from fleet.escalation import EscalationQueue
from fleet.registry import load_registry
from fleet.replay import AutoReplayListener, registry_auto_replay
from fleet.settings import FleetSettings
from fleet.testing import wait_until
from fleet.types import Attempt

POLICY = BreakerPolicy(
    consecutive_failures=2,
    minimum_calls=100,
    open_base_ms=1_000,
    jitter_ratio=0.0,
    half_open_successes=1,
)
PRIMARY = Scope("sim-primary")


class RedisRequeue:
    """Requeue callback that pushes the job onto a Redis list, as a broker queue would."""

    def __init__(self, client: redis.Redis, fail: bool = False) -> None:
        self.client, self.fail = client, fail

    def __call__(self, job: Mapping[str, Any]) -> None:
        if self.fail:
            raise RuntimeError("broker down")
        self.client.rpush("test:requeued", json.dumps(dict(job)))

    def job_ids(self) -> list[str]:
        return [json.loads(raw)["job_id"] for raw in self.client.lrange("test:requeued", 0, -1)]


@pytest.fixture
def queue(fleet_settings: FleetSettings, client: redis.Redis) -> EscalationQueue:
    enabled = registry_auto_replay(load_registry(environ={}))
    return EscalationQueue(
        fleet_settings, client, RedisRequeue(client), auto_replay_enabled=enabled
    )


def park(queue: EscalationQueue, job_id: str, task_type: str, provider: str = "sim-primary") -> str:
    attempt = Attempt(model=f"{provider}/llama", provider=provider, outcome="failure", status=503)
    return queue.park(
        job={"job_id": job_id, "task_type": task_type, "queue": "celery", "agent": "seo"},
        reason="all_routes_failed",
        policy="escalate",
        task_type=task_type,
        attempts=[attempt],
        queue="celery",
    ).id


def transition(to_state: str, scope: Scope = PRIMARY) -> Transition:
    return Transition(
        scope=scope,
        from_state="half_open",
        to_state=to_state,  # type: ignore[arg-type]
        trigger="probes_succeeded",
        threshold=1,
        value=1,
        generation=3,
        open_until_ms=None,
        at_ms=0,
    )


def test_shipped_registry_opts_in_per_task_type() -> None:
    enabled = registry_auto_replay(load_registry(environ={}))
    assert enabled("data_collection") is True
    assert enabled("gap_analysis") is False
    assert enabled("no_such_task") is False


def test_breaker_closing_replays_its_escalations_once_in_order(
    queue: EscalationQueue, client: redis.Redis
) -> None:
    now = [0]
    breaker = FleetBreaker(
        MemoryStore(clock_ms=lambda: now[0]),
        lambda scope: POLICY,
        worker_id="test:1",
        listeners=[AutoReplayListener(queue)],
    )
    sink = RedisRequeue(client)
    try:
        first = park(queue, "j1", "data_collection")
        park(queue, "j2", "gap_analysis")  # auto_replay off in the registry
        park(queue, "j3", "data_collection", provider="sim-backup")  # another breaker
        last = park(queue, "j4", "content_scraping")
        for _ in range(2):  # consecutive failures trip the breaker
            permit = breaker.acquire([PRIMARY])
            assert isinstance(permit, Permit)
            breaker.record(permit, Outcome(OutcomeClass.FAILURE))
        assert breaker.snapshot(PRIMARY).state == "open"
        assert sink.job_ids() == []  # opening replays nothing

        now[0] += 1_001
        probe = breaker.acquire([PRIMARY])
        assert isinstance(probe, Permit)
        assert probe.decision == "probe"
        breaker.record(probe, Outcome(OutcomeClass.SUCCESS))
        assert breaker.snapshot(PRIMARY).state == "closed"

        assert sink.job_ids() == ["j1", "j4"]
        assert queue.get(first).auto_replayed
        assert queue.get(last).status == "requeued"
        assert sorted(e.job_id for e in queue.list()) == ["j2", "j3"]
    finally:
        breaker.close()


def test_listener_ignores_other_transitions_and_local_closes(
    queue: EscalationQueue, client: redis.Redis
) -> None:
    listener = AutoReplayListener(queue)
    park(queue, "j1", "data_collection")
    listener.on_transition(transition("open"), source="shared")
    listener.on_transition(transition("half_open"), source="shared")
    listener.on_transition(transition("closed"), source="local")
    assert RedisRequeue(client).job_ids() == []
    listener.on_transition(transition("closed"), source="shared")
    assert RedisRequeue(client).job_ids() == ["j1"]
    listener.on_transition(transition("closed"), source="shared")
    assert RedisRequeue(client).job_ids() == ["j1"]


def test_model_scope_close_replays_entries_of_that_model(
    queue: EscalationQueue, client: redis.Redis
) -> None:
    park(queue, "j1", "data_collection")
    AutoReplayListener(queue).on_transition(
        transition("closed", Scope("sim-primary", "other-model")), source="shared"
    )
    assert RedisRequeue(client).job_ids() == []
    AutoReplayListener(queue).on_transition(
        transition("closed", Scope("sim-primary", "llama")), source="shared"
    )
    assert RedisRequeue(client).job_ids() == ["j1"]


def test_listener_never_raises_and_leaves_entries_open_on_failure(
    fleet_settings: FleetSettings, client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    broken = EscalationQueue(
        fleet_settings, client, RedisRequeue(client, fail=True), auto_replay_enabled=lambda t: True
    )
    entry_id = park(broken, "j1", "data_collection")
    AutoReplayListener(broken).on_transition(transition("closed"), source="shared")
    entry = broken.get(entry_id)
    assert (entry.status, entry.auto_replayed) == ("open", False)
    assert "auto-replay failed breaker=sim-primary" in caplog.text


def test_shared_redis_breaker_closing_replays_through_the_listener(
    fleet_settings: FleetSettings, queue: EscalationQueue, client: redis.Redis
) -> None:
    policy = POLICY.model_copy(update={"open_base_ms": 10})
    breaker = FleetBreaker.from_settings(
        fleet_settings, client, lambda scope: policy, listeners=[AutoReplayListener(queue)]
    )
    sink = RedisRequeue(client)
    try:
        park(queue, "j1", "data_collection")
        park(queue, "j2", "gap_analysis")
        for _ in range(2):
            permit = breaker.acquire([PRIMARY])
            assert isinstance(permit, Permit)
            breaker.record(permit, Outcome(OutcomeClass.FAILURE))
        assert breaker.snapshot(PRIMARY).state == "open"
        assert sink.job_ids() == []

        def probe() -> Permit | None:
            got = breaker.acquire([PRIMARY])
            return got if isinstance(got, Permit) else None

        granted = wait_until(probe, timeout_s=10, message="half-open probe granted")
        assert granted.decision == "probe"
        breaker.record(granted, Outcome(OutcomeClass.SUCCESS))
        assert breaker.snapshot(PRIMARY).state == "closed"
        assert sink.job_ids() == ["j1"]
    finally:
        breaker.close()
