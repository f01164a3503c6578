"""Client of a simulated provider's control endpoint (standard library only).

``SimControl(port)`` talks to ``http://127.0.0.1:<control_port>/control`` where
``control_port`` defaults to ``port + 10000``. Errors: ``ConnectionError`` when the control
port does not answer, ``ValueError`` when the server rejects a request (its message names
the field).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

from .modes import MODES, default_control_port

# No proxies: the simulator is always on loopback.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class SimControl:
    """Switch modes and read counters of a simulated provider on ``host:port``."""

    def __init__(
        self,
        port: int,
        control_port: int | None = None,
        *,
        host: str = "127.0.0.1",
        timeout_s: float = 5.0,
    ) -> None:
        self.port = port
        self.control_port = control_port or default_control_port(port)
        self.host = host
        self.timeout_s = timeout_s

    @property
    def url(self) -> str:
        """``http://<host>:<control_port>/control``."""
        return f"http://{self.host}:{self.control_port}/control"

    def _call(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(  # noqa: S310 - fixed http:// loopback URL
            self.url + path,
            data=data,
            method="GET" if body is None else "POST",
            headers={"Content-Type": "application/json"},
        )
        try:
            with _OPENER.open(request, timeout=self.timeout_s) as response:
                answer: dict[str, Any] = json.loads(response.read())
                return answer
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read()).get("error", exc.reason)
            except ValueError:
                message = exc.reason
            raise ValueError(f"simulated provider refused {path or 'GET'}: {message}") from exc
        except (OSError, ValueError) as exc:
            raise ConnectionError(
                f"simulated provider control at {self.url} did not answer ({exc}); "
                "is it running, and is the control port right?"
            ) from exc

    def stats(self) -> dict[str, Any]:
        """Mode, parameters, ``counts`` per mode, ``total_requests``, ``listening``."""
        return self._call("")

    def set_mode(
        self,
        mode: str,
        *,
        p: float | None = None,
        retry_after_s: float | None = None,
        latency_ms: float | None = None,
        slow_delay_s: float | None = None,
    ) -> dict[str, Any]:
        """Switch to ``mode`` (one of :data:`MODES`); returns the new stats."""
        if mode not in MODES:
            raise ValueError(f"mode {mode!r} is unknown; use one of: {', '.join(MODES)}")
        body: dict[str, Any] = {"mode": mode}
        params = {
            "p": p,
            "retry_after_s": retry_after_s,
            "latency_ms": latency_ms,
            "slow_delay_s": slow_delay_s,
        }
        body.update({k: v for k, v in params.items() if v is not None})
        return self._call("/mode", body)

    def reset_counts(self) -> dict[str, Any]:
        """Zero the counters; returns the new stats."""
        return self._call("/reset-counts", {})

    def wait_ready(self, timeout_s: float = 10.0) -> dict[str, Any]:
        """Poll the control endpoint until it answers; returns its stats.

        Raises ``ConnectionError`` when it has not answered within ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return self.stats()
            except ConnectionError:
                if time.monotonic() >= deadline:
                    raise
            time.sleep(0.05)
