"""`vlgate up --demo`: a llama-server killed under the launcher shows on /status as a crash, a restart, ready again."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from support.llama import free_port

pytestmark = pytest.mark.slow


def _pid_listening_on(parent: int, port: int) -> int:
    """The child of `parent` started with `--port <port>` (a llama-server of that vlgate)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == parent and b"--port" in argv and argv[argv.index(b"--port") + 1] == str(port).encode():
            return int(proc.name)
    raise AssertionError(f"no llama-server child of {parent} on port {port}")


def _status(url: str) -> dict:
    return httpx.get(url + "/status", timeout=5).json()


def _until(url: str, predicate, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        try:
            body = _status(url)
            if predicate(body):
                return body
        except httpx.HTTPError:
            body = {}
        assert time.monotonic() < deadline, f"not seen in {timeout}s: {body}"
        time.sleep(0.1)


def test_up_demo_status_shows_a_killed_backend_restarting(llama_server_bin: Path, tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config = tmp_path / "vlgate.yaml"
    config.write_text(yaml.safe_dump({"gateway": {"port": port}, "launcher": {"log_dir": str(tmp_path / "logs")}}))
    with open(tmp_path / "up.log", "wb") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen([sys.executable, "-m", "vlgate.cli", "up", "--demo", "--config", str(config)],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        body = _until(url, lambda b: [x["state"] for x in b["backends"]] == ["ready", "ready"], 60)
        assert [b["gpu"] for b in body["backends"]] == [None, None]  # CPU backends: no GPU, no NVML numbers
        assert all(b["gpu_stats"] is None for b in body["backends"])
        victim = body["backends"][1]
        pid = _pid_listening_on(proc.pid, int(victim["url"].rsplit(":", 1)[1]))
        subprocess.run(["kill", "-9", str(pid)], check=True)
        seen = _until(url, lambda b: b["backends"][1]["restarts"] == 1, 10)["backends"][1]
        assert seen["last_error"].startswith("crashed: killed by SIGKILL")
        body = _until(url, lambda b: b["backends"][1]["state"] == "ready", 30)
        assert body["backends"][0]["restarts"] == 0 and body["backends"][1]["restarts"] == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
