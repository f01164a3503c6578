"""agent-fleet: run LLM-agent jobs on a Celery fleet that shares one Redis-backed breaker.

The public API is pinned by ``__all__`` (and by ``tests/test_exported_members.py``).
"""

from typing import TYPE_CHECKING, Any

from fleet.errors import (
    AllRoutesFailed,
    BudgetExceeded,
    CallerError,
    ConfigError,
    ContentPolicyViolation,
    ContextLengthExceeded,
    FleetError,
    MissingCredential,
    PresetError,
    ProviderError,
    RegistryError,
    RetryLater,
    SubmitError,
    UnknownTaskType,
)
from fleet.settings import FleetSettings
from fleet.types import Attempt, LLMResult, Usage

if TYPE_CHECKING:
    from fleet.jobs import AgentJob, JobHandle, submit, submit_pipeline

__version__ = "0.1.0"
_JOBS_API = ("AgentJob", "JobHandle", "submit", "submit_pipeline")


def __getattr__(name: str) -> Any:
    """``fleet.submit`` and the other job names load :mod:`fleet.jobs` (Celery) on first use."""
    if name in _JOBS_API:
        from fleet import jobs  # noqa: PLC0415 - keeps `import fleet` light

        return getattr(jobs, name)
    raise AttributeError(f"module 'fleet' has no attribute {name!r}")


__all__ = [
    "AgentJob",
    "AllRoutesFailed",
    "Attempt",
    "BudgetExceeded",
    "CallerError",
    "ConfigError",
    "ContentPolicyViolation",
    "ContextLengthExceeded",
    "FleetError",
    "FleetSettings",
    "JobHandle",
    "LLMResult",
    "MissingCredential",
    "PresetError",
    "ProviderError",
    "RegistryError",
    "RetryLater",
    "SubmitError",
    "UnknownTaskType",
    "Usage",
    "__version__",
    "submit",
    "submit_pipeline",
]
