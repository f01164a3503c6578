"""Job store and step cache on a real Redis: CAS transitions, counters, indexes, errors."""

from __future__ import annotations

import threading

import pytest

from fleet.context import JobContext, current_job, job_scope
from fleet.errors import JobNotFound, StateUnavailable
from fleet.jobs import AgentJob
from fleet.jobstore import JobStore
from fleet.middleware import CallContext
from fleet.redis_client import make_redis
from fleet.settings import FleetSettings
from fleet.stepcache import StepCacheMiddleware, completed_steps, steps_key
from fleet.testing import free_port
from fleet.testing.redis_container import RedisContainer
from fleet.types import Attempt, LLMResult, Usage

pytestmark = pytest.mark.docker


def _job(**kw: object) -> AgentJob:
    return AgentJob(
        agent="research.research", task_type="data_collection", payload={"topic": "x"}, **kw
    )  # type: ignore[arg-type]


def _result(text: str = "ok", task_type: str = "data_collection", cost: float = 0.01) -> LLMResult:
    attempt = Attempt(model="sim-primary/sim-small", provider="sim-primary", outcome="success")
    return LLMResult(
        text=text,
        model=attempt.model,
        provider=attempt.provider,
        task_type=task_type,
        usage=Usage(prompt_tokens=3, completion_tokens=4),
        cost_usd=cost,
        latency_ms=1.0,
        attempts=[attempt],
        preset="local",
        preset_version=1,
    )


@pytest.fixture
def store(fleet_settings: FleetSettings) -> JobStore:
    return JobStore(fleet_settings, make_redis(fleet_settings))


def test_create_is_idempotent_and_counted(store: JobStore) -> None:
    job = _job()
    assert store.create(job) is True
    assert store.create(job) is False
    record = store.get(job.job_id)
    assert record.state == "queued"
    assert record.agent == "research.research"
    assert record.job["payload"] == {"topic": "x"}
    assert store.counts()["submitted"] == 1
    assert store.state_sizes()["queued"] == 1


def test_lifecycle_and_terminal_is_final(store: JobStore) -> None:
    job = _job()
    store.create(job)
    assert store.mark_running(job.job_id, worker="w1", delivery=1) == "running"
    attempt = Attempt(model="m", provider="p", outcome="failure", status=503)
    assert store.finish(
        job.job_id, "failed", error="boom", policy="fail", policy_reason="r", history=[attempt]
    )
    # a redelivered copy can neither run nor settle it again
    assert store.mark_running(job.job_id, worker="w2", delivery=2) == "terminal"
    assert not store.finish(job.job_id, "succeeded", result={"a": 1})
    record = store.get(job.job_id)
    assert record.state == "failed"
    assert record.error == "boom"
    assert record.worker == "w1"
    assert record.history == [attempt]
    assert record.policy == "fail"
    counts = store.counts()
    assert counts["submitted"] == 1
    assert counts["failed"] == 1
    assert counts["succeeded"] == 0
    assert store.state_sizes() == {
        "queued": 0,
        "running": 0,
        "succeeded": 0,
        "escalated": 0,
        "failed": 1,
        "cancelled": 0,
    }


def test_concurrent_settlements_reach_exactly_one_terminal_state(
    fleet_settings: FleetSettings,
) -> None:
    jobs = [_job() for _ in range(50)]
    store = JobStore(fleet_settings, make_redis(fleet_settings))
    for job in jobs:
        store.create(job)
    wins: list[tuple[str, str]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(4)

    def settle(state: str) -> None:
        own = JobStore(fleet_settings, make_redis(fleet_settings))
        barrier.wait()
        for job in jobs:
            if own.finish(job.job_id, state, result=state):  # type: ignore[arg-type]
                with lock:
                    wins.append((job.job_id, state))

    threads = [
        threading.Thread(target=settle, args=(s,))
        for s in ("succeeded", "failed", "escalated", "cancelled")
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(j for j, _ in wins) == sorted(j.job_id for j in jobs)
    counts = store.counts()
    terminal = counts["succeeded"] + counts["failed"] + counts["escalated"] + counts["cancelled"]
    assert terminal == counts["submitted"] == 50
    for job_id, state in wins:
        assert store.get(job_id).state == state


def test_requeue_from_escalated_moves_counters_back(store: JobStore) -> None:
    job = _job()
    store.create(job)
    store.finish(job.job_id, "escalated", error="all routes failed")
    assert store.counts()["escalated"] == 1
    assert store.back_to_queued(job.job_id, allowed_from=("escalated",))
    assert store.counts()["escalated"] == 0
    assert store.get(job.job_id).state == "queued"
    assert not store.back_to_queued(job.job_id, allowed_from=("escalated",))


def test_list_by_state_newest_first(store: JobStore) -> None:
    a, b, c = _job(), _job(), _job()
    for job in (a, b, c):
        store.create(job)
    store.finish(b.job_id, "succeeded", result={"ok": True})
    assert [r.job_id for r in store.list("succeeded")] == [b.job_id]
    assert {r.job_id for r in store.list("queued")} == {a.job_id, c.job_id}
    assert len(store.list()) == 3
    assert store.get(b.job_id).result == {"ok": True}
    with pytest.raises(ValueError, match="not a job state"):
        store.list("done")


def test_unknown_job_raises_not_found(store: JobStore) -> None:
    with pytest.raises(JobNotFound, match="no job with id"):
        store.get("0" * 32)
    assert store.state("0" * 32) is None


def test_redis_down_is_state_unavailable_not_empty() -> None:
    settings = FleetSettings.load(redis_url=f"redis://127.0.0.1:{free_port()}/0", namespace="t")
    store = JobStore(settings, make_redis(settings))
    with pytest.raises(StateUnavailable, match="Redis did not answer"):
        store.state("0" * 32)
    with pytest.raises(StateUnavailable):
        store.create(_job())
    cache = StepCacheMiddleware(settings, make_redis(settings))
    with pytest.raises(StateUnavailable):
        cache.before_call(CallContext(task_type="data_collection", messages=[], job_id="j", step=0))


def test_step_cache_answers_completed_steps_only(fleet_settings: FleetSettings) -> None:
    client = make_redis(fleet_settings)
    cache = StepCacheMiddleware(fleet_settings, client)
    ctx0 = CallContext(task_type="data_collection", messages=[], job_id="j1", step=0)
    ctx1 = CallContext(task_type="data_collection", messages=[], job_id="j1", step=1)
    assert cache.before_call(ctx0) is None
    first = _result("first")
    cache.after_call(ctx0, first)
    cache.after_call(ctx0, _result("second"))  # never overwrites a paid step
    assert cache.before_call(ctx0) == first
    assert cache.before_call(ctx1) is None
    # another task type at the same step (agent code changed) is not answered from cache
    other = CallContext(task_type="gap_analysis", messages=[], job_id="j1", step=0)
    assert cache.before_call(other) is None
    # calls outside a job pass through
    assert cache.before_call(CallContext(task_type="data_collection", messages=[])) is None
    assert completed_steps(fleet_settings, client, "j1") == {0: first}


def test_a_job_execution_reads_its_paid_steps_once(fleet_settings: FleetSettings) -> None:
    client = make_redis(fleet_settings)
    cache = StepCacheMiddleware(fleet_settings, client)
    job_id = "c" * 32
    paid = _result("paid")
    outside = CallContext(task_type="data_collection", messages=[], job_id=job_id, step=0)
    cache.after_call(outside, paid)

    def reads() -> tuple[int, int]:
        stats = client.info("commandstats")
        return tuple(  # type: ignore[return-value]
            int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("hgetall", "hget")
        )

    before = reads()
    with job_scope(JobContext(job_id)) as job:
        steps = [
            CallContext(task_type="data_collection", messages=[], job_id=job_id, step=n)
            for n in (job.next_step(), job.next_step(), job.next_step())
        ]
        answers = [cache.before_call(c) for c in steps]
        cache.after_call(steps[0], paid)  # a cached answer is not written again
        cache.after_call(steps[1], _result("new"))
        settled_with = completed_steps(fleet_settings, client, job_id)  # the job's history
    hgetall, hget = (a - b for a, b in zip(reads(), before, strict=True))
    assert answers == [paid, None, None]
    # one HGETALL for the whole execution, settlement included (INFO calls are not HGETs)
    assert (hgetall, hget) == (1, 0)
    assert settled_with == {0: paid, 1: _result("new")}
    assert completed_steps(fleet_settings, client, job_id) == settled_with


def test_a_step_stored_first_by_another_delivery_is_read_back(
    fleet_settings: FleetSettings,
) -> None:
    client = make_redis(fleet_settings)
    cache = StepCacheMiddleware(fleet_settings, client)
    job_id = "d" * 32
    theirs, ours = _result("theirs"), _result("ours")
    with job_scope(JobContext(job_id)) as job:
        ctx = CallContext(task_type="data_collection", messages=[], job_id=job_id, step=0)
        assert cache.before_call(ctx) is None  # nothing paid yet: reads the (empty) steps
        job.next_step()
        # a concurrent delivery of the same job (another process) stores step 0 first
        client.hset(steps_key(fleet_settings, job_id), "0", theirs.model_dump_json())
        cache.after_call(ctx, ours)  # HSETNX loses: the stored answer is theirs
        assert job.paid_steps is None  # so settling reads the truth back
        assert completed_steps(fleet_settings, client, job_id) == {0: theirs}


def test_job_scope_numbers_steps_and_restores() -> None:
    assert current_job() is None
    with job_scope(JobContext("a" * 32, session_id="s")) as ctx:
        assert current_job() is ctx
        assert [ctx.next_step() for _ in range(3)] == [0, 1, 2]
        with job_scope(JobContext("b" * 32)) as inner:
            assert current_job() is inner
            assert inner.next_step() == 0
        assert current_job() is ctx
    assert current_job() is None


def test_wrong_type_reply_is_state_unavailable(store: JobStore) -> None:
    store.redis.set(store.job_key("x" * 32), "not a hash")
    with pytest.raises(StateUnavailable):
        store.state("x" * 32)


def test_records_survive_a_redis_restart(redis_container: RedisContainer) -> None:
    settings = FleetSettings.load(redis_url=redis_container.url, namespace="test")
    store = JobStore(settings, make_redis(settings))
    jobs = [_job() for _ in range(20)]
    for job in jobs:
        store.create(job)
    for job in jobs[:5]:
        store.finish(job.job_id, "succeeded", result={"n": 1})
    before = (store.counts(), store.state_sizes(), [store.get(j.job_id) for j in jobs])

    redis_container.restart()  # graceful restart: the AOF is replayed

    after_store = JobStore(settings, make_redis(settings))
    after = (
        after_store.counts(),
        after_store.state_sizes(),
        [after_store.get(j.job_id) for j in jobs],
    )
    assert after == before
    assert after_store.finish(jobs[5].job_id, "failed", error="x")  # scripts load again
