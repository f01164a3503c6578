"""The public API of ``fleet`` and ``breaker_service`` is what ``__all__`` says, and it resolves."""

from __future__ import annotations

import subprocess
import sys

import breaker_service
import fleet

FLEET_API = {
    "AgentJob", "AllRoutesFailed", "Attempt", "BudgetExceeded", "CallerError", "ConfigError",
    "ContentPolicyViolation", "ContextLengthExceeded", "EscalationQueue", "FleetClient",
    "FleetError", "FleetSettings", "JobHandle", "LLMResult", "MissingCredential", "PresetError",
    "ProviderError", "RegistryError", "RetryLater", "SubmitError", "UnknownTaskType", "Usage",
    "__version__", "allm_call", "llm_call", "set_default_client", "submit", "submit_pipeline",
}  # fmt: skip


def test_fleet_all_is_pinned() -> None:
    assert set(fleet.__all__) == FLEET_API
    assert sorted(fleet.__all__) == fleet.__all__


def test_every_exported_name_resolves() -> None:
    for name in fleet.__all__:
        assert getattr(fleet, name) is not None, name
    for name in breaker_service.__all__:
        assert getattr(breaker_service, name) is not None, name


def test_unknown_attribute_is_an_attribute_error() -> None:
    try:
        fleet.no_such_thing  # type: ignore[attr-defined]  # noqa: B018
    except AttributeError as exc:
        assert "no_such_thing" in str(exc)
    else:
        raise AssertionError("fleet.no_such_thing resolved")


def test_import_fleet_stays_light() -> None:
    code = (
        "import sys, fleet; "
        "heavy = [m for m in ('celery', 'httpx', 'redis') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
