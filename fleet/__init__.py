"""agent-fleet: run LLM-agent jobs on a Celery fleet that shares one Redis-backed breaker.

The public API is pinned by ``__all__`` (and by ``tests/test_exported_members.py``).
"""

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

__version__ = "0.1.0"

__all__ = [
    "AllRoutesFailed",
    "Attempt",
    "BudgetExceeded",
    "CallerError",
    "ConfigError",
    "ContentPolicyViolation",
    "ContextLengthExceeded",
    "FleetError",
    "FleetSettings",
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
]
