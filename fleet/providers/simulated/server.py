"""The simulated provider: an API port with fault modes and a separate control port.

Standard library only (``http.server.ThreadingHTTPServer``), so it runs in a minimal
container. Use it in-process::

    with SimulatedProvider(port=0, name="sim-a") as sim:
        base_url = sim.base_url          # http://127.0.0.1:<port>/v1
        sim.set_mode("down")

or as a process: ``python -m fleet.providers.simulated --port P`` / ``fleet sim-provider``.
The control port stays up in every mode (including ``refuse``); see :mod:`.control`.
"""

from __future__ import annotations

import json
import logging
import signal
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from .modes import (
    MODES,
    ModeSettings,
    Reply,
    SimState,
    default_control_port,
    error_reply,
    fault_reply,
    healthy_reply,
)

logger = logging.getLogger("fleet.sim")

_API_PATHS = {
    "/v1/chat/completions": "openai",
    "/chat/completions": "openai",
    "/v1/messages": "anthropic",
    "/messages": "anthropic",
}
_MAX_REQUEST_BYTES = 8 * 1024 * 1024


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], handler: type, sim: SimulatedProvider) -> None:
        self.sim = sim
        super().__init__(address, handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away (deadline hit, connection dropped) is normal here."""
        if isinstance(sys.exc_info()[1], OSError):
            logger.debug("sim client went away name=%s client=%s", self.sim.name, client_address)
        else:
            logger.exception("sim handler failed name=%s client=%s", self.sim.name, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        # Headers and body go out as separate writes: without NODELAY, Nagle plus delayed
        # ACKs add ~40 ms to every answer.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("sim request name=%s %s", self.server.sim.name, format % args)

    def send_reply(self, reply: Reply) -> None:
        self.send_response(reply.status)
        for key, value in reply.headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        self.wfile.write(reply.body)

    def read_json(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        if length > _MAX_REQUEST_BYTES:
            raise ValueError("request body too large")
        raw = self.rfile.read(length) if length else b""
        return json.loads(raw) if raw else {}

    def drop(self) -> None:
        """Close the connection without answering."""
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            logger.debug("sim connection already closed name=%s", self.server.sim.name)


class _ApiHandler(_Handler):
    def setup(self) -> None:
        super().setup()
        self.server.sim._track(self.connection, add=True)

    def finish(self) -> None:
        self.server.sim._track(self.connection, add=False)
        super().finish()

    def do_GET(self) -> None:
        if self.path.rstrip("/") in ("/v1/models", "/models"):
            model = {"id": f"{self.server.sim.name}-model", "object": "model", "owned_by": "sim"}
            self.send_reply(Reply(200, json.dumps({"object": "list", "data": [model]}).encode()))
        else:
            self.send_reply(Reply(404, b'{"error": {"message": "not found", "code": "not_found"}}'))

    def do_POST(self) -> None:
        protocol = _API_PATHS.get(self.path.split("?")[0].rstrip("/"))
        if protocol is None:
            self.read_json_safely()
            self.send_reply(Reply(404, b'{"error": {"message": "not found", "code": "not_found"}}'))
            return
        sim = self.server.sim
        request = self.read_json_safely()
        settings, generation, draw = sim.state.begin()
        if settings.mode in {"hang", "refuse"}:
            # refuse: a request that slipped in on a kept-alive connection is dropped.
            if settings.mode == "hang":
                sim.state.wait_change(generation, timeout_s=None)
            self.drop()
            return
        if settings.mode == "slow":
            sim.state.wait_change(generation, timeout_s=settings.slow_delay_s)
        elif settings.latency_ms > 0:
            sim.state.wait_stopped(settings.latency_ms / 1000.0)
        if sim.state.stopped:
            self.drop()
            return
        if not isinstance(request, dict) or not isinstance(request.get("messages"), list):
            self.send_reply(_bad_request(protocol))
            return
        key = self.headers.get("x-api-key") or self.headers.get("authorization") or ""
        key = key.removeprefix("Bearer ").strip()
        reply = fault_reply(settings, protocol, request, draw, presented_key=key)
        if reply is None:
            usage = settings.mode != "no_usage"
            reply = healthy_reply(protocol, request, sim.name, usage=usage)
        self.send_reply(reply)

    def read_json_safely(self) -> Any:
        try:
            return self.read_json()
        except ValueError:
            return None


def _bad_request(protocol: str) -> Reply:
    message = "body must be a JSON object with a 'messages' list"
    return error_reply(protocol, 400, "invalid_request_error", "invalid_request", message)


class _ControlHandler(_Handler):
    def do_GET(self) -> None:
        if self.path.rstrip("/") == "/control":
            self.send_json(200, self.server.sim.stats())
        else:
            self.send_json(404, {"error": "GET /control"})

    def do_POST(self) -> None:
        sim = self.server.sim
        path = self.path.rstrip("/")
        try:
            body = self.read_json()
        except ValueError as exc:
            self.send_json(400, {"error": f"body must be JSON: {exc}"})
            return
        if path == "/control/reset-counts":
            sim.reset_counts()
            self.send_json(200, sim.stats())
        elif path == "/control/mode":
            try:
                sim.set_mode(**_mode_args(body))
            except (TypeError, ValueError) as exc:
                self.send_json(400, {"error": str(exc)})
                return
            self.send_json(200, sim.stats())
        else:
            self.send_json(404, {"error": "POST /control/mode or /control/reset-counts"})

    def send_json(self, status: int, data: Any) -> None:
        body = json.dumps(data).encode()
        self.send_reply(Reply(status, body, (("Content-Type", "application/json"),)))


def _mode_args(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict) or "mode" not in body:
        raise ValueError(f"body must be a JSON object with 'mode' (one of: {', '.join(MODES)})")
    allowed = {"mode", "p", "retry_after_s", "latency_ms", "slow_delay_s"}
    unknown = set(body) - allowed
    if unknown:
        raise ValueError(f"unknown field(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    args: dict[str, Any] = {"mode": str(body["mode"])}
    for key in allowed - {"mode"}:
        if body.get(key) is not None:
            args[key] = float(body[key])
    return args


class SimulatedProvider:
    """A simulated LLM provider on ``127.0.0.1:port`` with a control port beside it.

    ``port=0`` picks a free port (read :attr:`port` after :meth:`start`); ``control_port``
    defaults to ``port + 10000`` (``0`` picks a free one). ``start()``/``stop()`` or use it
    as a context manager. Every server runs in daemon threads of this process.
    """

    def __init__(
        self,
        *,
        port: int = 0,
        name: str = "sim",
        mode: str = "healthy",
        control_port: int | None = None,
        host: str = "127.0.0.1",
        latency_ms: float = 0.0,
        p: float = 0.5,
        retry_after_s: float = 1.0,
        slow_delay_s: float = 60.0,
        seed: int = 0,
    ) -> None:
        settings = ModeSettings(
            mode=mode,
            p=p,
            retry_after_s=retry_after_s,
            latency_ms=latency_ms,
            slow_delay_s=slow_delay_s,
        )
        self.name = name
        self.host = host
        self.state = SimState(settings, seed=seed)
        self._port = port
        self._control_port = control_port
        self._lock = threading.RLock()
        self._api: _Server | None = None
        self._control: _Server | None = None
        self._threads: list[threading.Thread] = []
        self._connections: set[socket.socket] = set()
        self._conn_lock = threading.Lock()

    @property
    def port(self) -> int:
        """The API port (resolved after :meth:`start` when 0 was given)."""
        return self._port

    @property
    def control_port(self) -> int:
        """The control port (resolved after :meth:`start`)."""
        if self._control_port is None:
            return default_control_port(self._port)
        return self._control_port

    @property
    def base_url(self) -> str:
        """OpenAI/Anthropic base URL for clients: ``http://127.0.0.1:<port>/v1``."""
        return f"http://{self.host}:{self.port}/v1"

    @property
    def listening(self) -> bool:
        """True while the API port accepts connections (False in ``refuse`` mode)."""
        with self._lock:
            return self._api is not None

    def start(self) -> SimulatedProvider:
        """Bind both ports and serve in background threads. Returns self."""
        with self._lock:
            if self._port == 0:
                # Resolve the port now so that `refuse` can re-bind the same one later.
                probe = _Server((self.host, 0), _ApiHandler, self)
                self._port = probe.server_address[1]
                probe.server_close()
            self._control = _Server((self.host, self.control_port), _ControlHandler, self)
            self._control_port = self._control.server_address[1]
            self._serve(self._control, "control")
            if self.state.settings.mode != "refuse":
                self._open_api()
        logger.info(
            "sim provider started name=%s port=%s control_port=%s mode=%s",
            self.name,
            self.port,
            self.control_port,
            self.state.settings.mode,
        )
        return self

    def _serve(self, server: _Server, role: str) -> None:
        thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"sim-{self.name}-{role}",
            daemon=True,
        )
        thread.start()
        self._threads.append(thread)

    def _open_api(self) -> None:
        self._api = _Server((self.host, self._port), _ApiHandler, self)
        self._serve(self._api, "api")

    def _close_api(self) -> None:
        if self._api is not None:
            self._api.shutdown()
            self._api.server_close()
            self._api = None
        self._drop_connections()

    def _track(self, conn: socket.socket, *, add: bool) -> None:
        with self._conn_lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def _drop_connections(self) -> None:
        with self._conn_lock:
            conns = list(self._connections)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                logger.debug("sim connection already closed name=%s", self.name)

    def set_mode(self, mode: str, **params: float) -> ModeSettings:
        """Switch the fault mode (and ``p``, ``retry_after_s``, ``latency_ms``, ``slow_delay_s``).

        Raises ValueError naming the bad field. Leaving ``refuse`` re-opens the API port;
        entering it closes the port and drops open connections; ``hang`` requests are released.
        """
        with self._lock:
            old, new = self.state.update(mode=mode, **params)
            if new.mode == "refuse" and self._api is not None:
                self._close_api()
            elif new.mode != "refuse" and self._api is None and self._control is not None:
                self._open_api()
        logger.info(
            "sim mode changed name=%s port=%s old_mode=%s mode=%s p=%s retry_after_s=%s",
            self.name,
            self.port,
            old.mode,
            new.mode,
            new.p,
            new.retry_after_s,
        )
        return new

    def reset_counts(self) -> None:
        """Zero the per-mode request counters."""
        self.state.reset_counts()

    def stats(self) -> dict[str, Any]:
        """Mode, parameters, counts per mode, total requests, ports and listening state."""
        data = self.state.snapshot()
        data.update(
            name=self.name, port=self.port, control_port=self.control_port, listening=self.listening
        )
        return data

    def stop(self) -> None:
        """Release waiting requests, close both ports and drop open connections."""
        self.state.stop()
        with self._lock:
            self._close_api()
            if self._control is not None:
                self._control.shutdown()
                self._control.server_close()
                self._control = None
        for thread in self._threads:
            thread.join(timeout=5.0)
        self._threads.clear()
        logger.info("sim provider stopped name=%s port=%s", self.name, self.port)

    def __enter__(self) -> SimulatedProvider:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def serve_until_signalled(sim: SimulatedProvider) -> None:
    """Run ``sim`` in the foreground until SIGINT or SIGTERM (works as a container's PID 1)."""
    stop = threading.Event()

    def _on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    sim.start()
    sys.stdout.write(
        f"sim-provider {sim.name} listening on {sim.base_url} "
        f"(control http://{sim.host}:{sim.control_port}/control, mode {sim.state.settings.mode})\n"
    )
    sys.stdout.flush()
    try:
        while not stop.wait(0.5):
            pass
    finally:
        sim.stop()
