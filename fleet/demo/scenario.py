"""The demo's script: phases, a job stream, live snapshots, and the final report."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from breaker_service.events import BreakerEvent, EventLog
from breaker_service.scope import Scope
from breaker_service.store.base import ScopeSnapshot
from breaker_service.store.redis import RedisStore
from fleet.demo.environment import DemoEnvironment
from fleet.escalation import EscalationQueue
from fleet.jobs import JobClient
from fleet.jobstore import TERMINAL_STATES
from fleet.providers.simulated import SimControl
from fleet.redis_client import make_redis
from fleet.registry import Registry, load_registry
from fleet.settings import FleetSettings
from workers.agents.seo import SEO_PIPELINE

PROVIDERS = ("sim-primary", "sim-backup")


@dataclass(frozen=True)
class Phase:
    """One step of the scenario: provider modes, how long, whether to keep submitting."""

    name: str
    title: str
    primary: str
    backup: str
    duration_s: float
    submit: bool = True


@dataclass(frozen=True)
class DemoConfig:
    """Knobs of ``fleet demo``. ``speed`` scales every phase (0.5 = twice as fast)."""

    pipelines_per_s: float = 1.5
    speed: float = 1.0
    workers: int = 2
    settle_timeout_s: float = 120.0

    def phases(self) -> list[Phase]:
        """The scripted outage, in order."""
        s = self.speed
        return [
            Phase("healthy", "Both providers healthy", "healthy", "healthy", 6 * s),
            Phase("primary_down", "Primary down: breaker opens", "down", "healthy", 8 * s),
            Phase("both_down", "Backup down too: local-failure policies", "down", "down", 6 * s),
            Phase("recovery", "Both recover: breakers close, auto-replay", "healthy", "healthy",
                  8 * s),
        ]  # fmt: skip


@dataclass
class Snapshot:
    """What the live view shows at one moment."""

    phase: str
    elapsed_s: float
    breakers: list[ScopeSnapshot]
    providers: dict[str, dict[str, object]]
    jobs: dict[str, int]
    escalations_open: int
    events: list[BreakerEvent]
    submitted_pipelines: int


@dataclass
class DemoReport:
    """The demo's outcome: everything the summary table prints."""

    counts: dict[str, int]
    by_policy: dict[str, int]
    degraded: int
    calls: dict[str, dict[str, int]]
    transitions: Counter[tuple[str, str, str]]
    cost_usd: float
    escalations_parked: int
    escalations_auto_replayed: int
    escalations_requeued_by_operator: int
    pipelines: int
    settled: bool
    elapsed_s: float
    notes: list[str] = field(default_factory=list)

    @property
    def conserved(self) -> bool:
        """Submitted jobs == the sum of terminal states (nothing lost, nothing doubled)."""
        return self.counts.get("submitted", 0) == sum(
            self.counts.get(s, 0) for s in TERMINAL_STATES
        )


class Observer:
    """Reads breaker, provider, job and escalation state for the live view and the report."""

    def __init__(
        self, settings: FleetSettings, registry: Registry, primary: SimControl, backup: SimControl
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.redis = make_redis(settings)
        self.events = EventLog(self.redis, namespace=settings.namespace)
        self.store = RedisStore(self.redis, namespace=settings.namespace)
        self.controls = {"sim-primary": primary, "sim-backup": backup}
        self.scopes = [Scope(p) for p in PROVIDERS]

    def snapshot(self, phase: str, elapsed_s: float, pipelines: int, jobs: JobClient,
                 escalations: EscalationQueue) -> Snapshot:  # fmt: skip
        """One live-view frame."""
        breakers = [
            self.store.snapshot(s, self.registry.policy_for(s.provider)) for s in self.scopes
        ]
        providers = {name: c.stats() for name, c in self.controls.items()}
        return Snapshot(
            phase=phase,
            elapsed_s=elapsed_s,
            breakers=breakers,
            providers=providers,
            jobs=jobs.store.state_sizes(),
            escalations_open=escalations.count(status="open"),
            events=list(reversed(self.events.recent(6))),  # newest first
            submitted_pipelines=pipelines,
        )

    def transitions(self) -> Counter[tuple[str, str, str]]:
        """(scope, from, to) -> count, over the whole event stream."""
        counter: Counter[tuple[str, str, str]] = Counter()
        for e in self.events.read_after("0-0", count=self.settings.events_maxlen):
            if e.kind == "transition":
                counter[(e.scope, e.from_state, e.to_state)] += 1
        return counter

    def close(self) -> None:
        """Release connections."""
        self.redis.close()


def _submit_tick(jobs: JobClient, n: int) -> None:
    """One tick of the job stream: an SEO pipeline, plus a classification (policy degrade)
    and a structured extraction (policy fail) every other tick."""
    jobs.submit_pipeline(
        SEO_PIPELINE, {"domain": f"site{n}.example", "keywords": ["llm", "breaker"]}
    )
    if n % 2 == 0:
        text = {"text": f"ticket {n}: the checkout page times out"}
        jobs.submit("triage.classify", text)
        jobs.submit("extract.fields", text)


def _settled(jobs: JobClient) -> bool:
    sizes = jobs.store.state_sizes()
    return sizes.get("queued", 0) == 0 and sizes.get("running", 0) == 0


def run_demo(
    config: DemoConfig, on_frame: Callable[[Snapshot], None], say: Callable[[str], None]
) -> DemoReport:
    """Run the whole scenario; ``on_frame`` gets live snapshots, ``say`` one-line narration."""
    started = time.monotonic()
    say("starting: embedded Redis, two simulated providers, "
        f"{config.workers} Celery worker processes")  # fmt: skip
    with DemoEnvironment(workers=config.workers) as env:
        assert env.settings is not None and env.primary is not None and env.backup is not None
        settings = env.settings
        registry = load_registry(settings.registry_path)
        observer = Observer(settings, registry, env.primary, env.backup)
        jobs = JobClient(settings)
        escalations = EscalationQueue(settings, observer.redis)
        pipelines = 0
        try:
            for phase in config.phases():
                env.primary.set_mode(phase.primary)
                env.backup.set_mode(phase.backup)
                say(f"phase: {phase.title} (primary {phase.primary}, backup {phase.backup})")
                phase_end = time.monotonic() + phase.duration_s
                next_submit = time.monotonic()
                while time.monotonic() < phase_end:
                    if phase.submit and time.monotonic() >= next_submit:
                        _submit_tick(jobs, pipelines)
                        pipelines += 1
                        next_submit += 1.0 / config.pipelines_per_s
                    on_frame(observer.snapshot(phase.name, time.monotonic() - started,
                                               pipelines, jobs, escalations))  # fmt: skip
                    time.sleep(0.25)
            say("phase: settling (waiting for every job to reach a terminal state)")
            auto_replayed_before = escalations.count(status="requeued")
            deadline = time.monotonic() + config.settle_timeout_s
            requeued_by_operator = 0
            operator_step_done = False
            while time.monotonic() < deadline:
                on_frame(observer.snapshot("settling", time.monotonic() - started, pipelines,
                                           jobs, escalations))  # fmt: skip
                if _settled(jobs):
                    open_entries = escalations.count(status="open")
                    if open_entries and not operator_step_done:
                        say(f"operator: requeueing {open_entries} escalations that have no "
                            "auto-replay (fleet escalations requeue --all)")  # fmt: skip
                        requeued_by_operator = len(escalations.requeue_matching(actor="demo"))
                        operator_step_done = True
                    elif not open_entries or operator_step_done:
                        break
                time.sleep(0.25)
            report = _report(
                observer, jobs, escalations, pipelines,
                settled=_settled(jobs),
                auto_replayed=auto_replayed_before,
                requeued_by_operator=requeued_by_operator,
                elapsed_s=time.monotonic() - started,
            )  # fmt: skip
        finally:
            jobs.close()
            observer.close()
    return report


def _report(
    observer: Observer,
    jobs: JobClient,
    escalations: EscalationQueue,
    pipelines: int,
    *,
    settled: bool,
    auto_replayed: int,
    requeued_by_operator: int,
    elapsed_s: float,
) -> DemoReport:
    records = [r for state in TERMINAL_STATES for r in jobs.store.list(state, limit=100_000)]
    calls = {}
    for name, control in observer.controls.items():
        stats = control.stats()
        counts = {str(k): int(v) for k, v in dict(stats.get("counts", {})).items()}
        calls[name] = {"total": int(stats.get("total_requests", 0)), **counts}
    parked = sum(escalations.count(status=s) for s in ("open", "requeued", "resolved"))
    return DemoReport(
        counts=jobs.store.counts(),
        by_policy=dict(Counter(r.policy for r in records if r.policy)),
        degraded=sum(1 for r in records if r.degraded),
        calls=calls,
        transitions=observer.transitions(),
        cost_usd=sum(r.cost_usd for r in records),
        escalations_parked=parked,
        escalations_auto_replayed=auto_replayed,
        escalations_requeued_by_operator=requeued_by_operator,
        pipelines=pipelines,
        settled=settled,
        elapsed_s=elapsed_s,
    )
