"""agent-fleet: run LLM-agent jobs on a Celery fleet that shares one Redis-backed breaker.

The public API is pinned by ``__all__`` (and by ``tests/test_exported_members.py``).
"""

import importlib
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
    from fleet.escalation import EscalationQueue
    from fleet.jobs import AgentJob, JobHandle, submit, submit_pipeline
    from fleet.llm import FleetClient, allm_call, llm_call, set_default_client

__version__ = "0.1.0"
# Loaded on first use, so that `import fleet` stays light (no Celery, httpx or Redis clients).
_LAZY = {
    "AgentJob": "fleet.jobs",
    "JobHandle": "fleet.jobs",
    "submit": "fleet.jobs",
    "submit_pipeline": "fleet.jobs",
    "FleetClient": "fleet.llm",
    "llm_call": "fleet.llm",
    "allm_call": "fleet.llm",
    "set_default_client": "fleet.llm",
    "EscalationQueue": "fleet.escalation",
}


def __getattr__(name: str) -> Any:
    """Load ``fleet.llm_call``, ``fleet.submit`` and friends from their module on first use."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fleet' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "AgentJob",
    "AllRoutesFailed",
    "Attempt",
    "BudgetExceeded",
    "CallerError",
    "ConfigError",
    "ContentPolicyViolation",
    "ContextLengthExceeded",
    "EscalationQueue",
    "FleetClient",
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
    "allm_call",
    "llm_call",
    "set_default_client",
    "submit",
    "submit_pipeline",
]
