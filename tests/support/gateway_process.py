"""Run the real gateway (`vlgate serve`) as a subprocess on a free port, with a generated config."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from support.llama import free_port


class GatewayProcess:
    def __init__(self, config: dict[str, Any], workdir: Path, args: list[str] | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # drain_delay_s 0: tests stop many gateways and no load balancer watches them (test_drain.py sets it)
        config = {**config, "gateway": {"model": "youtu-vl", "drain_delay_s": 0, **config.get("gateway", {}),
                                        "port": self.port}}
        keys = config["gateway"].get("api_keys") or []
        key = keys[0] if keys else None
        # /ready shows backend detail only with a key when keys are configured
        self.auth = {"Authorization": f"Bearer {key['key'] if isinstance(key, dict) else key}"} if key else {}
        self.config_path = workdir / f"gateway-{self.port}.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = workdir / f"gateway-{self.port}.log"
        self.args = args or []
        self.env = env or {}  # on top of this process's environment (OTEL_* for the tracing tests)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> GatewayProcess:
        with open(self.log_path, "wb") as log:  # the child writes to its own copy of the descriptor
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "vlgate.cli", "serve", "--config", str(self.config_path), *self.args],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited {self.proc.returncode}: {self.log()}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"gateway not healthy in {timeout}s: {self.log()}")

    def wait_ready(self, timeout: float = 30.0, backends: int = 1) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        body: dict[str, Any] = {}
        while time.monotonic() < deadline:
            r = httpx.get(self.url + "/ready", timeout=2, headers=self.auth)
            body = r.json()
            if sum(b["state"] == "ready" for b in body["backends"]) >= backends:
                return body
            time.sleep(0.05)
        raise AssertionError(f"fewer than {backends} backends ready: {body}")

    def ready(self) -> dict[str, Any]:
        return httpx.get(self.url + "/ready", timeout=5, headers=self.auth).json()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait(5)
