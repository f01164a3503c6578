"""The simulated provider itself: protocol answers, control endpoint, counts, process mode.

Real HTTP on 127.0.0.1 (httpx and the stdlib control client), real OS processes.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

import fleet.providers.simulated as simulated_pkg
from fleet.cli import build_app
from fleet.providers.simulated import MODES, SimControl, SimulatedProvider, default_control_port
from fleet.testing import free_port, wait_until

BODY = {
    "model": "m-1",
    "max_tokens": 100,
    "messages": [{"role": "user", "content": "one two three"}],
}


@pytest.fixture
def sim() -> Iterator[SimulatedProvider]:
    with SimulatedProvider(port=0, control_port=0, name="sim-b") as provider:
        yield provider


@pytest.fixture
def control(sim: SimulatedProvider) -> SimControl:
    return SimControl(sim.port, sim.control_port)


def post(sim: SimulatedProvider, path: str = "/chat/completions", **kw: object) -> httpx.Response:
    body = kw.pop("json", BODY)
    return httpx.post(f"{sim.base_url}{path}", json=body, timeout=5.0, trust_env=False)


def test_openai_answer_is_deterministic(sim: SimulatedProvider) -> None:
    first, second = post(sim).json(), post(sim).json()
    assert first == second
    assert first["usage"] == {"prompt_tokens": 3, "completion_tokens": 16, "total_tokens": 19}
    text = first["choices"][0]["message"]["content"]
    assert "sim-b" in text and "m-1" in text


def test_anthropic_answer_counts_system(sim: SimulatedProvider) -> None:
    body = {**BODY, "system": "be very brief", "max_tokens": 4}
    answer = post(sim, "/messages", json=body).json()
    assert answer["type"] == "message"
    assert answer["usage"] == {"input_tokens": 6, "output_tokens": 4}
    assert "sim-b" in answer["content"][0]["text"]


def test_models_and_bad_requests(sim: SimulatedProvider) -> None:
    models = httpx.get(f"{sim.base_url}/models", trust_env=False).json()
    assert models["data"][0]["id"] == "sim-b-model"
    bad = post(sim, json={"model": "m"})
    assert bad.status_code == 400 and "messages" in bad.json()["error"]["message"]
    assert post(sim, "/nowhere").status_code == 404


def test_fault_answers(sim: SimulatedProvider, control: SimControl) -> None:
    control.set_mode("down")
    assert post(sim).status_code == 503
    control.set_mode("rate_limited", retry_after_s=9)
    limited = post(sim)
    assert limited.status_code == 429 and limited.headers["retry-after"] == "9"
    control.set_mode("auth_fail")
    assert post(sim).status_code == 401
    control.set_mode("garbage")
    garbage = post(sim)
    assert garbage.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(garbage.content)
    control.set_mode("context_length")
    refused = post(sim)
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "context_length_exceeded"
    control.set_mode("content_policy")
    assert post(sim).json()["error"]["code"] == "content_filter"


def test_counts_per_mode_and_reset(sim: SimulatedProvider, control: SimControl) -> None:
    for mode, n in (("healthy", 3), ("down", 2), ("rate_limited", 1), ("flaky", 4)):
        control.set_mode(mode, p=0.5)
        for _ in range(n):
            post(sim)
    stats = control.stats()
    assert stats["total_requests"] == 10
    assert {m: c for m, c in stats["counts"].items() if c} == {
        "healthy": 3,
        "down": 2,
        "rate_limited": 1,
        "flaky": 4,
    }
    assert set(stats["counts"]) == set(MODES)
    assert stats["mode"] == "flaky" and stats["p"] == 0.5 and stats["name"] == "sim-b"
    assert control.reset_counts()["total_requests"] == 0
    assert sum(control.stats()["counts"].values()) == 0


def test_refuse_closes_the_port_but_not_control(
    sim: SimulatedProvider, control: SimControl
) -> None:
    control.set_mode("refuse")
    stats = control.stats()
    assert stats["mode"] == "refuse" and stats["listening"] is False
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", sim.port), timeout=2).close()
    assert control.set_mode("healthy")["listening"] is True
    assert post(sim).status_code == 200


def test_hang_holds_until_the_mode_changes(sim: SimulatedProvider, control: SimControl) -> None:
    control.set_mode("hang")
    outcome: list[BaseException | httpx.Response] = []

    def call() -> None:
        try:
            outcome.append(post(sim))
        except httpx.HTTPError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    wait_until(lambda: control.stats()["counts"]["hang"] == 1, message="hung request arrived")
    assert not outcome  # accepted, not answered
    control.set_mode("healthy")
    wait_until(lambda: not thread.is_alive(), message="hung request released")
    assert isinstance(outcome[0], httpx.RemoteProtocolError)  # dropped without an answer


def test_stop_releases_hung_requests() -> None:
    sim = SimulatedProvider(port=0, control_port=0, mode="hang").start()
    errors: list[BaseException] = []

    def call() -> None:
        try:
            post(sim)
        except httpx.HTTPError as exc:
            errors.append(exc)

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    wait_until(lambda: sim.stats()["counts"]["hang"] == 1, message="hung request arrived")
    sim.stop()
    wait_until(lambda: not thread.is_alive(), message="hung request released by stop")
    assert errors


def test_bad_control_input_names_the_field(sim: SimulatedProvider, control: SimControl) -> None:
    with pytest.raises(ValueError, match="unknown"):
        control.set_mode("sideways")
    with pytest.raises(ValueError, match="p must be between 0 and 1"):
        control.set_mode("flaky", p=1.5)
    raw = httpx.post(
        f"http://127.0.0.1:{sim.control_port}/control/mode",
        json={"mode": "down", "colour": "red"},
        trust_env=False,
    )
    assert raw.status_code == 400 and "colour" in raw.json()["error"]
    assert control.stats()["mode"] == "healthy"  # nothing changed


def test_control_client_reports_an_absent_simulator() -> None:
    port = free_port()
    with pytest.raises(ConnectionError, match="did not answer"):
        SimControl(port, free_port()).wait_ready(timeout_s=0.2)
    assert default_control_port(8100) == 18100
    assert default_control_port(60000) == 50000


def test_cli_set_mode_and_stats(sim: SimulatedProvider) -> None:
    runner = CliRunner()
    ports = ["--port", str(sim.port), "--control-port", str(sim.control_port)]
    result = runner.invoke(build_app(), ["sim-provider", "set-mode", "flaky", *ports, "--p", "0.3"])
    assert result.exit_code == 0, result.output
    post(sim)
    result = runner.invoke(build_app(), ["sim-provider", "stats", *ports, "--json"])
    assert result.exit_code == 0, result.output
    stats = json.loads(result.output)
    assert stats["mode"] == "flaky" and stats["p"] == 0.3 and stats["counts"]["flaky"] == 1
    result = runner.invoke(build_app(), ["sim-provider", "set-mode", "nope", *ports])
    assert result.exit_code == 2
    result = runner.invoke(build_app(), ["sim-provider", "stats", "--port", str(free_port())])
    assert result.exit_code == 1


def test_runs_as_a_process_and_stops_on_sigterm() -> None:
    port, control_port = free_port(), free_port()
    argv = [sys.executable, "-m", "fleet.providers.simulated", "--port", str(port)]
    argv += ["--control-port", str(control_port), "--name", "proc", "--mode", "down"]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as proc:
        try:
            control = SimControl(port, control_port)
            assert control.wait_ready(timeout_s=20)["mode"] == "down"
            url = f"http://127.0.0.1:{port}/v1/chat/completions"
            assert httpx.post(url, json=BODY, trust_env=False).status_code == 503
            control.set_mode("healthy")
            assert "proc" in httpx.post(url, json=BODY, trust_env=False).text
            proc.send_signal(signal.SIGTERM)
            output, _ = proc.communicate(timeout=20)
            assert proc.returncode == 0
            assert b"listening on http://127.0.0.1" in output
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()


def test_package_runs_on_the_standard_library_alone(tmp_path: Path) -> None:
    """The container copies only the simulated package: it must not need fleet's deps."""
    pkg = tmp_path / "fleet" / "providers"
    shutil.copytree(Path(simulated_pkg.__file__).parent, pkg / "simulated")
    (tmp_path / "fleet" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    script = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "from fleet.providers.simulated import SimulatedProvider, SimControl\n"
        "with SimulatedProvider(port=0, control_port=0, mode='down') as sim:\n"
        "    assert SimControl(sim.port, sim.control_port).stats()['mode'] == 'down'\n"
        "heavy = {'pydantic', 'httpx', 'typer', 'redis'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
        "print('ok')\n"
    )
    # -I -S: no site-packages at all, so any third-party import would fail.
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", script, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
