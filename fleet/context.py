"""The job an ``llm_call`` runs inside: a context variable set by the worker around each job.

``llm_call`` reads :func:`current_job` to tag calls with the job id and a step number, so a
redelivered job finds the steps it already paid for (:mod:`fleet.stepcache`).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

_CURRENT: ContextVar[JobContext | None] = ContextVar("fleet_current_job", default=None)


@dataclass
class JobContext:
    """Identity of the job being executed, plus its step counter.

    ``next_step()`` returns 0, 1, 2... in the order the job's code calls ``llm_call``; a job
    whose code is deterministic therefore numbers its steps the same way on every delivery.
    """

    job_id: str
    session_id: str | None = None
    workflow_id: str | None = None
    task_type: str | None = None
    paid_steps: dict[int, bytes] | None = field(default=None, repr=False, compare=False)
    """Steps this job already paid for (step -> stored LLMResult JSON), read once per execution
    by :class:`fleet.stepcache.StepCacheMiddleware`; ``None`` until then."""
    _counter: Iterator[int] = field(default_factory=itertools.count, repr=False, compare=False)

    def next_step(self) -> int:
        """The index of the next ``llm_call`` of this job execution (0 for the first)."""
        return next(self._counter)


def current_job() -> JobContext | None:
    """The job this code runs inside, or ``None`` outside a job (e.g. in an app process)."""
    return _CURRENT.get()


@contextmanager
def job_scope(ctx: JobContext) -> Iterator[JobContext]:
    """Make ``ctx`` the current job for the ``with`` block; the previous one is restored."""
    token = _CURRENT.set(ctx)
    try:
        yield ctx
    finally:
        _CURRENT.reset(token)
