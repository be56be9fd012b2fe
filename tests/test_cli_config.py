"""The CLI and the config: one clear line per problem, non-zero exit, no traceback; drain on SIGTERM."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from support.fakebackend import FakeBackend
from support.gateway_process import GatewayProcess
from vlgate.config import ConfigError, load_config, parse_config


def vlgate(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vlgate.cli", *args], capture_output=True, text=True, timeout=timeout)


def test_embedded_default_config_is_valid() -> None:
    config = load_config(None)
    assert config.gateway.port == 8000 and config.gateway.host == "127.0.0.1"
    assert config.gateway.model == "youtu-vl"


def test_config_errors_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config({"gateway": {"queue": {"size": -1}, "colour": "red"}, "backends": [{"url": "ftp://x"}]}, "f.yaml")
    msg = str(exc.value)
    assert "f.yaml: gateway.queue.size:" in msg
    assert "f.yaml: gateway.colour: unknown field" in msg
    assert "f.yaml: backends.0.url:" in msg and "http://" in msg


@pytest.mark.parametrize("content,needle", [
    ("gateway: [1, 2", "not valid YAML"),
    ("- just\n- a list\n", "top level must be a mapping"),
    ("gateway:\n  port: not-a-port\n", "gateway.port"),
])
def test_bad_config_file_is_one_clear_line(tmp_path: Path, content: str, needle: str) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(content)
    r = vlgate("serve", "--config", str(cfg), "--backend", "http://127.0.0.1:1")
    assert r.returncode == 2
    assert needle in r.stderr and "Traceback" not in r.stderr


def test_missing_config_and_no_backends() -> None:
    r = vlgate("serve", "--config", "/nonexistent/vlgate.yaml")
    assert r.returncode == 2 and "not found" in r.stderr and "Traceback" not in r.stderr
    r = vlgate("serve")
    assert r.returncode == 2 and "no backends" in r.stderr and "Traceback" not in r.stderr


def test_busy_port_is_one_clear_line() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = vlgate("serve", "--backend", "http://127.0.0.1:1", "--port", str(port))
    assert r.returncode == 2
    assert f"port {port}" in r.stderr and "already in use" in r.stderr and "Traceback" not in r.stderr


def test_serve_help_documents_every_flag() -> None:
    out = vlgate("serve", "--help").stdout
    for flag in ("--config", "--backend", "--host", "--port", "--model", "--slots", "--backend-api-key", "--log-json"):
        assert flag in out


def test_api_keys_from_env(tmp_path: Path) -> None:
    fb = FakeBackend().start()
    import os

    os.environ["VLGATE_API_KEYS"] = "env-key-1, env-key-2"
    try:
        gw = GatewayProcess({"backends": [{"url": fb.url}]}, tmp_path).start()
    finally:
        del os.environ["VLGATE_API_KEYS"]
    gw.auth = {"Authorization": "Bearer env-key-1"}  # /ready shows backends only to a key holder
    try:
        gw.wait_ready()
        body = {"messages": [{"role": "user", "content": "x"}]}
        assert httpx.post(gw.url + "/v1/chat/completions", json=body).status_code == 401
        ok = httpx.post(gw.url + "/v1/chat/completions", json=body, headers={"Authorization": "Bearer env-key-2"})
        assert ok.status_code == 200
    finally:
        gw.stop()
        fb.stop()


def test_sigterm_drains_streams_in_flight(tmp_path: Path) -> None:
    fb = FakeBackend(delay_s=0.5).start()  # each answer starts after 0.5 s, then streams 8 chunks
    gw = GatewayProcess({"backends": [{"url": fb.url, "slots": 4}], "gateway": {"drain_grace_s": 10}}, tmp_path).start()
    try:
        gw.wait_ready()
        results: list[str] = []

        def stream() -> None:
            with httpx.stream("POST", gw.url + "/v1/chat/completions", timeout=20,
                              json={"stream": True, "messages": [{"role": "user", "content": "x"}]}) as r:
                results.append(r.read().decode())

        threads = [threading.Thread(target=stream) for _ in range(3)]
        for t in threads:
            t.start()
        import time

        deadline = time.monotonic() + 5
        while gw.ready()["in_flight"] < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert gw.proc is not None
        gw.proc.send_signal(signal.SIGTERM)
        time.sleep(0.1)
        # draining: not ready, new connections refused or 503
        try:
            assert httpx.get(gw.url + "/ready", timeout=2).status_code == 503
        except httpx.TransportError:
            pass  # already stopped accepting
        for t in threads:
            t.join(20)
        assert len(results) == 3
        assert all(r.rstrip().endswith("data: [DONE]") for r in results), results
        assert gw.proc.wait(15) == 0
    finally:
        gw.stop()
        fb.stop()


def test_image_budget_follows_the_launcher() -> None:
    config = parse_config({"launcher": {"image_max_tokens": 1024}})
    assert config.images.grid.max_tokens == 1024
    with pytest.raises(ConfigError) as exc:
        parse_config({"launcher": {"image_max_tokens": 1024}, "images": {"grid": {"max_tokens": 2048}}})
    assert "must equal launcher.image_max_tokens" in str(exc.value)
