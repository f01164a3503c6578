"""The README's first command: `fleet demo` runs the scripted outage end to end."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_demo_runs_the_outage_and_conserves_every_job() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "fleet.cli", "demo", "--speed", "0.4", "--no-live"],
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-4000:]
    for phase in ("Primary down", "Backup down too", "Both recover", "settling"):
        assert phase in text
    assert "submitted = sum of terminal" in text and "│  yes │" in text
    # The breaker opened fleet-wide for the primary and closed again after recovery.
    assert "closed → open" in text and "half_open → closed" in text
    assert "jobs settled by policy degrade" in text and "jobs settled by policy fail" in text
