"""The shared HTTP pool and one JSON request under a real total deadline.

httpx timeouts are per operation (connect, each read, each write), so a server that trickles
bytes could hold a call far past its deadline. :func:`send_json` therefore enforces the
total itself: the read timeout never exceeds the time left, the body is streamed and the
deadline checked between chunks, and a timer shuts the socket down at the deadline so a
blocked read returns at once.
"""

from __future__ import annotations

import contextlib
import email.utils
import logging
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from breaker_service.outcomes import OutcomeClass, TransportError
from fleet.errors import ConfigError, ProviderError

logger = logging.getLogger("fleet.providers")

MAX_BODY_BYTES = 16 * 1024 * 1024
"""Answers larger than this are cut off and reported as a protocol failure."""


def make_http_client(*, max_connections: int = 100) -> httpx.Client:
    """A new httpx client to share between all provider clients of one process.

    The caller owns it (close it on shutdown, or use it as a context manager). Deadlines are
    set per request by the provider clients; redirects are not followed and no retries are
    made. Environment proxies are ignored (``trust_env=False``) so calls go where the
    registry says.
    """
    limits = httpx.Limits(
        max_connections=max_connections,
        max_keepalive_connections=max_connections,
        keepalive_expiry=30.0,
    )
    return httpx.Client(limits=limits, follow_redirects=False, trust_env=False)


@dataclass(frozen=True)
class RawResponse:
    """A complete HTTP answer read within the deadline."""

    status: int
    body: bytes
    retry_after_s: float | None
    latency_ms: float


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP-date.

    Returns None when absent or unparseable; never negative.
    """
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = now or datetime.now(UTC)
    return max(0.0, (when - current).total_seconds())


class _Watchdog:
    """Shuts a response's socket down at the deadline, waking a blocked read."""

    def __init__(self, remaining_s: float, response: httpx.Response) -> None:
        self.fired = False
        self._sock = _socket_of(response)
        self._timer = threading.Timer(max(0.0, remaining_s), self._fire)
        self._timer.daemon = True
        if self._sock is not None:
            self._timer.start()

    def _fire(self) -> None:
        self.fired = True
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)

    def cancel(self) -> None:
        self._timer.cancel()


def _socket_of(response: httpx.Response) -> socket.socket | None:
    stream = response.extensions.get("network_stream")
    if stream is None:
        return None
    sock = stream.get_extra_info("socket")
    return sock if isinstance(sock, socket.socket) else None


def _transport_kind(exc: httpx.TransportError) -> TransportError:
    if isinstance(exc, httpx.TimeoutException):
        return "timeout"
    if isinstance(exc, httpx.ConnectError):
        return "connect"
    if isinstance(exc, httpx.ReadError | httpx.WriteError | httpx.CloseError):
        return "reset"
    return "protocol"


def _failure(label: str, url: str, kind: TransportError, why: str, started: float) -> ProviderError:
    latency_ms = (time.monotonic() - started) * 1000.0
    logger.info(
        "provider call failed provider=%s transport_error=%s latency_ms=%.1f",
        label,
        kind,
        latency_ms,
    )
    return ProviderError(
        f"provider {label!r}: {kind} error calling {url} ({why}) after {latency_ms:.0f} ms",
        outcome=OutcomeClass.FAILURE.value,
        transport_error=kind,
        latency_ms=latency_ms,
    )


def _timeouts(connect_timeout_s: float, total_timeout_s: float) -> httpx.Timeout:
    connect = min(connect_timeout_s, total_timeout_s)
    return httpx.Timeout(connect=connect, read=total_timeout_s, write=total_timeout_s, pool=connect)


def send_json(
    http: httpx.Client,
    url: str,
    *,
    headers: Mapping[str, str],
    payload: Mapping[str, Any],
    connect_timeout_s: float,
    total_timeout_s: float,
    label: str,
) -> RawResponse:
    """POST ``payload`` as JSON and read the whole answer within ``total_timeout_s``.

    Any status is returned (the caller maps it); transport failures (connect refused,
    timeout, reset, protocol garbage, deadline hit) raise ``ProviderError`` with
    ``outcome="failure"`` and ``transport_error`` set; an invalid URL raises ``ConfigError``.
    ``label`` names the provider in messages and logs; headers are never logged or echoed.
    """
    started = time.monotonic()
    deadline = started + total_timeout_s
    try:
        request = http.build_request(
            "POST",
            url,
            json=dict(payload),
            headers=dict(headers),
            timeout=_timeouts(connect_timeout_s, total_timeout_s),
        )
    except httpx.InvalidURL as exc:
        raise ConfigError(
            f"provider {label!r}: {url!r} is not a valid URL; fix the provider's base_url"
        ) from exc
    try:
        response = http.send(request, stream=True)
    except httpx.UnsupportedProtocol as exc:
        raise ConfigError(
            f"provider {label!r}: {url!r} has no http:// or https:// scheme; fix its base_url"
        ) from exc
    except httpx.TransportError as exc:
        kind = _transport_kind(exc)
        raise _failure(label, url, kind, type(exc).__name__, started) from exc
    watchdog = _Watchdog(deadline - time.monotonic(), response)
    try:
        body = _read_body(response, deadline)
    except httpx.TransportError as exc:
        kind = "timeout" if watchdog.fired else _transport_kind(exc)
        raise _failure(label, url, kind, type(exc).__name__, started) from exc
    finally:
        watchdog.cancel()
        response.close()
    if body is _DEADLINE or watchdog.fired:
        raise _failure(label, url, "timeout", "total deadline hit", started)
    if body is _TOO_LARGE:
        raise _failure(label, url, "protocol", f"body over {MAX_BODY_BYTES} bytes", started)
    return RawResponse(
        status=response.status_code,
        body=body,
        retry_after_s=parse_retry_after(response.headers.get("retry-after")),
        latency_ms=(time.monotonic() - started) * 1000.0,
    )


_DEADLINE = b"<deadline>"
_TOO_LARGE = b"<too large>"


def _read_body(response: httpx.Response, deadline: float) -> bytes:
    """The whole body, or the sentinel ``_DEADLINE`` / ``_TOO_LARGE`` (compared by identity)."""
    if time.monotonic() >= deadline:
        return _DEADLINE
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return _TOO_LARGE
        if time.monotonic() >= deadline:
            return _DEADLINE
    return b"".join(chunks)
