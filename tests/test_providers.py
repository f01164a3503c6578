"""Provider clients against the simulated provider: real HTTP on 127.0.0.1, no mocks.

Each fault mode must map to the right ``ProviderError`` fields; deadlines must hold against
servers that hang, answer late or trickle bytes; API keys must never leak.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
import pytest

from breaker_service.outcomes import classify
from fleet.errors import ConfigError, MissingCredential, ProviderError
from fleet.providers import (
    AnthropicClient,
    CompletionRequest,
    OpenAICompatClient,
    ProviderClient,
    make_http_client,
    make_provider_client,
)
from fleet.providers.base import detect_caller_fault
from fleet.providers.http import parse_retry_after
from fleet.providers.simulated import SimulatedProvider

KEY_ENV = "FLEET_TEST_SIM_KEY"
SECRET = "sk-canary-7f3a9c1e5b2d4680"


@dataclass(frozen=True)
class Provider:
    """A ProviderConfig for tests (fleet.registry.ProviderInfo has the same fields)."""

    name: str
    base_url: str
    kind: str = "simulated"
    api_key_env: str | None = KEY_ENV
    connect_timeout_s: float = 1.0
    timeout_s: float = 2.0


def request(
    *, total_s: float = 2.0, max_tokens: int = 50, model: str = "sim-large"
) -> CompletionRequest:
    return CompletionRequest(
        api_name=model,
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "what is the answer to everything"},
        ],
        max_tokens=max_tokens,
        temperature=0.0,
        connect_timeout_s=1.0,
        total_timeout_s=total_s,
    )


@pytest.fixture
def sim() -> Iterator[SimulatedProvider]:
    with SimulatedProvider(port=0, control_port=0, name="sim-a") as provider:
        yield provider


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with make_http_client(max_connections=10) as client:
        yield client


def client_for(
    sim: SimulatedProvider, http: httpx.Client, kind: str = "simulated"
) -> ProviderClient:
    provider = Provider(name=sim.name, base_url=sim.base_url, kind=kind)
    return make_provider_client(provider, http, environ={KEY_ENV: SECRET})


def test_kinds_pick_the_protocol(sim: SimulatedProvider, http: httpx.Client) -> None:
    assert isinstance(client_for(sim, http, "openai"), OpenAICompatClient)
    assert isinstance(client_for(sim, http, "simulated"), OpenAICompatClient)
    assert isinstance(client_for(sim, http, "anthropic"), AnthropicClient)
    with pytest.raises(ConfigError, match=r"kind 'grpc'.*anthropic, openai, simulated"):
        client_for(sim, http, "grpc")


def test_healthy_returns_text_and_usage(sim: SimulatedProvider, http: httpx.Client) -> None:
    result = client_for(sim, http).complete(request(max_tokens=50))
    assert result.status == 200
    assert "sim-a" in result.text and "sim-large" in result.text
    assert result.prompt_tokens == 8  # "be brief" + 6 words
    assert result.completion_tokens == 16  # min(max_tokens, 16)
    assert result.latency_ms > 0
    assert client_for(sim, http).complete(request(max_tokens=3)).completion_tokens == 3


def test_missing_usage_gives_none(sim: SimulatedProvider, http: httpx.Client) -> None:
    sim.set_mode("no_usage")
    result = client_for(sim, http).complete(request())
    assert result.text and result.prompt_tokens is None and result.completion_tokens is None


FAULTS = [
    # mode, status, transport_error, caller_fault, retry_after_s
    ("down", 503, None, None, None),
    ("rate_limited", 429, None, None, 7.0),
    ("auth_fail", 401, None, None, None),
    ("garbage", 200, "protocol", None, None),
    ("context_length", 400, None, "context_length", None),
    ("content_policy", 400, None, "content_policy", None),
    ("refuse", None, "connect", None, None),
    ("hang", None, "timeout", None, None),
    ("slow", None, "timeout", None, None),
]


@pytest.mark.parametrize("kind", ["simulated", "anthropic"])
@pytest.mark.parametrize("case", FAULTS, ids=[c[0] for c in FAULTS])
def test_fault_modes_map_to_provider_errors(
    sim: SimulatedProvider,
    http: httpx.Client,
    kind: str,
    case: tuple[str, int | None, str | None, str | None, float | None],
) -> None:
    mode, status, transport, caller_fault, retry_after = case
    sim.set_mode(mode, retry_after_s=7.0)
    with pytest.raises(ProviderError) as info:
        client_for(sim, http, kind).complete(request(total_s=0.5))
    err = info.value
    expected = classify(transport_error=transport) if transport else classify(status=status)  # type: ignore[arg-type]
    assert err.outcome == expected.value
    assert err.status == status
    assert err.transport_error == transport
    assert err.caller_fault == caller_fault
    assert err.retry_after_s == retry_after
    assert err.latency_ms > 0
    assert sim.name in str(err)


def test_auth_failure_names_the_env_var_and_masks_an_echoed_key(
    sim: SimulatedProvider, http: httpx.Client
) -> None:
    sim.set_mode("auth_fail")
    for kind in ("simulated", "anthropic"):
        with pytest.raises(ProviderError) as info:
            client_for(sim, http, kind).complete(request())
        assert info.value.outcome == "credential"
        # The sim echoes the key it received: proof the header was sent, and was masked.
        assert "Incorrect API key provided: ***" in str(info.value)
        assert KEY_ENV in str(info.value)


def test_flaky_fails_with_its_seeded_probability(http: httpx.Client) -> None:
    def pattern(seed: int) -> list[bool]:
        with SimulatedProvider(port=0, control_port=0, mode="flaky", p=0.3, seed=seed) as sim:
            client = client_for(sim, http)
            outcomes = []
            for _ in range(40):
                try:
                    client.complete(request())
                    outcomes.append(True)
                except ProviderError as exc:
                    assert exc.status == 503 and exc.outcome == "failure"
                    outcomes.append(False)
            assert sim.stats()["counts"]["flaky"] == 40
            return outcomes

    first = pattern(seed=11)
    assert first == pattern(seed=11)  # deterministic
    assert 4 <= first.count(False) <= 20  # p=0.3 of 40, loosely


def test_missing_key_raises_before_sending(sim: SimulatedProvider, http: httpx.Client) -> None:
    client = make_provider_client(
        Provider(name="sim-a", base_url=sim.base_url, api_key_env="FLEET_TEST_NOT_SET"),
        http,
        environ={},
    )
    with pytest.raises(MissingCredential, match="FLEET_TEST_NOT_SET"):
        client.complete(request())
    assert sim.stats()["total_requests"] == 0


def test_provider_without_key_sends_no_auth(sim: SimulatedProvider, http: httpx.Client) -> None:
    client = make_provider_client(
        Provider(name="sim-a", base_url=sim.base_url, api_key_env=None), http, environ={}
    )
    assert client.complete(request()).status == 200
    sim.set_mode("auth_fail")
    with pytest.raises(ProviderError, match=r"provided: \(none\)"):
        client.complete(request())


def test_anthropic_messages_usage_and_system(sim: SimulatedProvider, http: httpx.Client) -> None:
    result = client_for(sim, http, "anthropic").complete(request(max_tokens=5))
    assert "sim-a" in result.text and "sim-large" in result.text
    assert (result.prompt_tokens, result.completion_tokens) == (8, 5)
    sim.set_mode("no_usage")
    result = client_for(sim, http, "anthropic").complete(request())
    assert result.prompt_tokens is None and result.completion_tokens is None


def test_refuse_then_healthy_serves_again(sim: SimulatedProvider, http: httpx.Client) -> None:
    client = client_for(sim, http)
    assert client.complete(request()).status == 200  # leaves a pooled keep-alive connection
    sim.set_mode("refuse")
    for _ in range(3):
        with pytest.raises(ProviderError) as info:
            client.complete(request())
        assert info.value.transport_error == "connect"
        assert info.value.outcome == "failure"
    sim.set_mode("healthy")
    assert client.complete(request()).status == 200
    counts = sim.stats()["counts"]
    assert counts["refuse"] == 0 and counts["healthy"] == 2


@pytest.mark.parametrize("mode", ["hang", "slow"])
def test_deadline_holds_against_hang_and_slow(
    sim: SimulatedProvider, http: httpx.Client, mode: str
) -> None:
    sim.set_mode(mode, slow_delay_s=30.0)
    client = client_for(sim, http)
    worst = 0.0
    for total_s in (0.3, 0.6):
        started = time.monotonic()
        with pytest.raises(ProviderError) as info:
            client.complete(request(total_s=total_s))
        elapsed = time.monotonic() - started
        worst = max(worst, elapsed - total_s)
        assert info.value.transport_error == "timeout"
        assert elapsed < total_s + 1.0, f"{mode}: held {elapsed:.2f}s for a {total_s}s deadline"
    print(f"{mode}: max overshoot past deadline {worst * 1000:.0f} ms")


class TrickleServer:
    """Answers 200 with a large Content-Length, then one byte every 50 ms, forever."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.1)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._trickle, args=(conn,), daemon=True).start()

    def _trickle(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: 100000\r\n\r\n{"
            )
            try:
                while not self.stop.wait(0.05):
                    conn.sendall(b" ")
            except OSError:
                return

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        self.sock.close()


def test_total_deadline_holds_against_a_trickling_body(http: httpx.Client) -> None:
    server = TrickleServer()
    try:
        provider = Provider(name="trickle", base_url=f"http://127.0.0.1:{server.port}/v1")
        client = make_provider_client(provider, http, environ={KEY_ENV: SECRET})
        started = time.monotonic()
        with pytest.raises(ProviderError) as info:
            client.complete(request(total_s=0.5))
        elapsed = time.monotonic() - started
    finally:
        server.close()
    assert info.value.transport_error == "timeout"
    assert info.value.outcome == "failure"
    assert elapsed < 1.5, f"a trickling server held the call {elapsed:.2f}s (deadline 0.5s)"
    print(f"trickle: overshoot past deadline {(elapsed - 0.5) * 1000:.0f} ms")


def test_no_key_in_logs_errors_or_results(
    sim: SimulatedProvider, http: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    modes = ["healthy", "no_usage", *(m for m, *_ in FAULTS), "flaky"]
    for kind in ("simulated", "anthropic"):
        client = client_for(sim, http, kind)
        for mode in modes:
            sim.set_mode(mode, p=0.5)
            try:
                texts.append(repr(client.complete(request(total_s=0.3))))
            except ProviderError as exc:
                chain: BaseException | None = exc
                while chain is not None:
                    texts += [str(chain), repr(chain), repr(chain.args), repr(vars(chain))]
                    chain = chain.__cause__ or chain.__context__
    assert len(texts) > 20
    assert caplog.records, "expected the clients to log their failures"
    captured = "\n".join(texts) + caplog.text
    captured += "\n".join(repr(r.__dict__) for r in caplog.records)
    assert SECRET not in captured
    assert SECRET[:12] not in captured


def test_retry_after_parses_seconds_and_http_dates() -> None:
    now = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("12") == 12.0
    assert parse_retry_after("0.5") == 0.5
    assert parse_retry_after("Mon, 23 Nov 2026 12:00:30 GMT", now=now) == 30.0
    assert parse_retry_after("Mon, 23 Nov 2026 11:00:00 GMT", now=now) == 0.0
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_request_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match="max_tokens"):
        CompletionRequest("m", [], 0, 0.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="total_timeout_s"):
        CompletionRequest("m", [], 1, 0.0, 1.0, 0.0)


def test_connect_deadline_holds_against_a_full_accept_queue(http: httpx.Client) -> None:
    """A listener that never accepts, with its backlog full, drops SYNs: connect hangs."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=0)
    port = listener.getsockname()[1]
    fillers: list[socket.socket] = []
    try:
        for _ in range(10):  # fill the accept queue until a connect itself times out
            filler = socket.socket()
            fillers.append(filler)
            filler.settimeout(0.2)
            try:
                filler.connect(("127.0.0.1", port))
            except TimeoutError:
                break
        else:
            pytest.fail("could not fill the accept queue")
        provider = Provider(name="full", base_url=f"http://127.0.0.1:{port}/v1")
        client = make_provider_client(provider, http, environ={KEY_ENV: SECRET})
        slow_connect = CompletionRequest("m", [{"role": "user", "content": "x"}], 5, 0.0, 0.3, 5.0)
        started = time.monotonic()
        with pytest.raises(ProviderError) as info:
            client.complete(slow_connect)
        elapsed = time.monotonic() - started
    finally:
        for filler in fillers:
            filler.close()
        listener.close()
    assert info.value.transport_error == "timeout"
    assert "ConnectTimeout" in str(info.value)
    assert elapsed < 0.3 + 1.0, f"connect held {elapsed:.2f}s for a 0.3s connect deadline"
    print(f"connect: overshoot past deadline {(elapsed - 0.3) * 1000:.0f} ms")


@pytest.mark.parametrize(
    ("body", "fault"),
    [
        (
            b'{"error": {"code": "context_length_exceeded", "message": "too long"}}',
            "context_length",
        ),
        (
            b'{"type": "error", "error": {"type": "invalid_request_error", '
            b'"message": "prompt is too long: 210000 tokens > 200000 maximum"}}',
            "context_length",
        ),
        (b'{"error": {"code": "content_filter", "message": "filtered"}}', "content_policy"),
        (b'{"error": {"code": "invalid_value", "message": "temperature too high"}}', "bad_request"),
        (b"<html>Bad Request</html>", "bad_request"),
        (b"maximum context length is 8192 tokens", "context_length"),
    ],
)
def test_caller_fault_detection_reads_openai_and_anthropic_bodies(body: bytes, fault: str) -> None:
    assert detect_caller_fault(body) == fault


@pytest.mark.parametrize("base_url", ["http://127.0.0.1:abc/v1", "ftp://127.0.0.1/v1"])
def test_invalid_base_url_is_a_config_error(http: httpx.Client, base_url: str) -> None:
    """Our configuration, not the provider's health: never a ProviderError."""
    provider = Provider(name="broken", base_url=base_url)
    client = make_provider_client(provider, http, environ={KEY_ENV: SECRET})
    with pytest.raises(ConfigError, match="base_url"):
        client.complete(request())
