"""What every ``fleet`` command module shares: exit codes and common options.

Exit codes scripts can rely on: 0 success, 1 operation failed, 2 usage or configuration
error, 3 state unavailable (Redis did not answer).
"""

from __future__ import annotations

from typing import Annotated

import typer

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_UNAVAILABLE = 3

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts instead of tables.")]
ActorOpt = Annotated[str | None, typer.Option("--actor", help="Who did it (default: user@host).")]
