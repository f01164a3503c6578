"""A self-contained local fleet: the shipped registry pointed at simulated providers.

The shipped registry's ``local`` preset routes every task type to ``sim-primary`` (default
127.0.0.1:8701) and ``sim-backup`` (8702). :func:`write_local_registry` writes a copy of it
with other ports (free ones, so runs never collide) and, optionally, other breaker defaults,
for the demo and for tests that start their own simulated providers.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from breaker_service.policy import BreakerPolicy
from fleet.registry_validate import SHIPPED

PRIMARY_URL = "http://127.0.0.1:8701/v1"
BACKUP_URL = "http://127.0.0.1:8702/v1"
_BREAKER_TABLE = re.compile(r"^\[breaker\]\n(?:[^\[\n].*\n|\n)*", re.MULTILINE)


def shipped_registry_text() -> str:
    """The TOML text of the shipped registry (``fleet/data/registry.toml``)."""
    return SHIPPED.read_text(encoding="utf-8")


def _breaker_toml(policy: BreakerPolicy) -> str:
    lines = ["[breaker]"]
    for name, value in policy.model_dump().items():
        text = str(value).lower() if isinstance(value, bool) else repr(value)  # TOML true/false
        lines.append(f"{name} = {text}")
    return "\n".join(lines) + "\n\n"


def write_local_registry(
    dest: Path,
    *,
    primary_port: int,
    backup_port: int,
    breaker: Mapping[str, object] | None = None,
    sim_open_base_ms: int | None = None,
) -> Path:
    """Write the shipped registry with the simulated providers on the given ports.

    ``breaker`` overrides fields of the ``[breaker]`` defaults (validated as a BreakerPolicy);
    ``sim_open_base_ms`` replaces the simulated providers' own ``open_base_ms`` override.
    Returns ``dest``.
    """
    text = shipped_registry_text()
    for old, port in ((PRIMARY_URL, primary_port), (BACKUP_URL, backup_port)):
        if old not in text:
            raise ValueError(f"the shipped registry no longer contains {old}; update fleet.local")
        text = text.replace(old, f"http://127.0.0.1:{port}/v1")
    if breaker:
        policy = BreakerPolicy().merged(dict(breaker))
        text, n = _BREAKER_TABLE.subn(_breaker_toml(policy), text, count=1)
        if n != 1:
            raise ValueError("the shipped registry has no [breaker] table; update fleet.local")
    if sim_open_base_ms is not None:
        text = re.sub(
            r"(\[providers\.sim-(?:primary|backup)\.breaker\]\n)open_base_ms = \d+",
            rf"\g<1>open_base_ms = {int(sim_open_base_ms)}",
            text,
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(text, encoding="utf-8")
    return dest
