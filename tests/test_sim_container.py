"""The simulated provider as a container image (testcontainers, host networking).

The image is ``$FLEET_SIM_IMAGE`` (default ``local/fleet-sim:latest``); when missing it is
built with ``scripts/build-images``. Without a Docker engine these tests skip, unless
``FLEET_REQUIRE_DOCKER=1`` turns the skip into a failure.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fleet.errors import ProviderError
from fleet.providers import CompletionRequest, ProviderClient, make_http_client
from fleet.providers import make_provider_client as make_client
from fleet.providers.simulated import SimControl
from fleet.testing import free_port
from fleet.testing.redis_container import docker_available

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_IMAGE = "local/fleet-sim:latest"


def _unavailable(message: str) -> None:
    if os.environ.get("FLEET_REQUIRE_DOCKER") == "1":
        pytest.fail(message + " [FLEET_REQUIRE_DOCKER=1]", pytrace=False)
    pytest.skip(message)


def _image_present(image: str) -> bool:
    result = subprocess.run(
        ["docker", "image", "inspect", image], capture_output=True, timeout=30, check=False
    )
    return result.returncode == 0


@pytest.fixture(scope="module")
def sim_image() -> str:
    if not docker_available():
        _unavailable("no Docker engine: start one (scripts/test does) to run container tests")
    image = os.environ.get("FLEET_SIM_IMAGE", DEFAULT_IMAGE)
    if not _image_present(image):
        build = subprocess.run(
            [str(ROOT / "scripts" / "build-images")],
            env={**os.environ, "FLEET_SIM_IMAGE": image},
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if build.returncode != 0 or not _image_present(image):
            _unavailable(f"could not build {image} with scripts/build-images:\n{build.stderr}")
    return image


class Boxed:
    """A running simulator container and what tests need to reach it."""

    def __init__(self, image: str, name: str) -> None:
        os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
        from testcontainers.core.container import DockerContainer

        self.port, self.control_port = free_port(), free_port()
        self.container: Any = (
            DockerContainer(image)
            .with_kwargs(network_mode="host")
            .with_command(f"--port {self.port} --control-port {self.control_port} --name {name}")
        )
        self.container.start()
        self.control = SimControl(self.port, self.control_port)
        self.control.wait_ready(timeout_s=30)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stop(self) -> None:
        self.container.stop()


@pytest.fixture(scope="module")
def boxed(sim_image: str) -> Iterator[Boxed]:
    sim = Boxed(sim_image, "boxed")
    yield sim
    sim.stop()


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with make_http_client(max_connections=4) as client:
        yield client


class _Provider:
    def __init__(self, base_url: str, kind: str = "simulated") -> None:
        self.name = "boxed"
        self.kind = kind
        self.base_url = base_url
        self.api_key_env: str | None = None
        self.connect_timeout_s = 1.0
        self.timeout_s = 2.0


def client(boxed: Boxed, http: httpx.Client, kind: str = "simulated") -> ProviderClient:
    return make_client(_Provider(boxed.base_url, kind), http, environ={})


REQUEST = CompletionRequest(
    api_name="box-model",
    messages=[{"role": "user", "content": "hello from the host"}],
    max_tokens=8,
    temperature=0.0,
    connect_timeout_s=1.0,
    total_timeout_s=0.5,
)


def test_container_serves_both_protocols(boxed: Boxed, http: httpx.Client) -> None:
    boxed.control.set_mode("healthy")
    answer = client(boxed, http).complete(REQUEST)
    assert "boxed" in answer.text and "box-model" in answer.text
    assert (answer.prompt_tokens, answer.completion_tokens) == (4, 8)
    answer = client(boxed, http, "anthropic").complete(REQUEST)
    assert (answer.prompt_tokens, answer.completion_tokens) == (4, 8)


def test_modes_switch_through_the_control_port(boxed: Boxed, http: httpx.Client) -> None:
    sim = client(boxed, http)
    boxed.control.set_mode("healthy")
    boxed.control.reset_counts()
    cases = [("down", 503, None), ("rate_limited", 429, None), ("refuse", None, "connect")]
    for mode, status, transport in cases:
        boxed.control.set_mode(mode, retry_after_s=4)
        with pytest.raises(ProviderError) as info:
            sim.complete(REQUEST)
        assert (info.value.status, info.value.transport_error) == (status, transport), mode
    assert boxed.control.stats()["listening"] is False  # control answers in refuse mode
    assert info.value.outcome == "failure"
    boxed.control.set_mode("healthy")
    assert sim.complete(REQUEST).status == 200
    counts = boxed.control.stats()["counts"]
    assert {m: c for m, c in counts.items() if c} == {"down": 1, "rate_limited": 1, "healthy": 1}


def test_hang_in_a_container_is_cut_by_the_deadline(boxed: Boxed, http: httpx.Client) -> None:
    boxed.control.set_mode("hang")
    with pytest.raises(ProviderError) as info:
        client(boxed, http).complete(REQUEST)
    assert info.value.transport_error == "timeout"
    assert info.value.latency_ms < (REQUEST.total_timeout_s + 1.0) * 1000
    boxed.control.set_mode("healthy")
    assert client(boxed, http).complete(REQUEST).status == 200


def test_container_stops_cleanly_on_sigterm(sim_image: str) -> None:
    sim = Boxed(sim_image, "stopper")
    wrapped = sim.container.get_wrapped_container()
    try:
        wrapped.stop(timeout=10)  # SIGTERM; SIGKILL (exit 137) after 10 s if ignored
        wrapped.reload()
        assert wrapped.status == "exited"
        assert wrapped.attrs["State"]["ExitCode"] == 0
    finally:
        sim.stop()
