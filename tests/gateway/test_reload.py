"""Hot reload (`vlgate reload` and SIGHUP) under steady load: backends join and drain, keys, presets
and limits change for new requests, not one request fails; a broken file is refused and the old
config keeps running."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from support.gateway_process import GatewayProcess
from support.load import Load
from support.wait import wait_until

pytestmark = pytest.mark.slow

K1, K2 = "key-one-0123456789", "key-two-0123456789"


def rewrite(gw: GatewayProcess, config: dict[str, Any]) -> None:
    """The file as an operator would edit it (the gateway's port kept)."""
    data = {**config, "gateway": {"model": "youtu-vl", "drain_delay_s": 0, **config.get("gateway", {}),
                                  "port": gw.port}}
    gw.config_path.write_text(yaml.safe_dump(data))


def vlgate_reload(gw: GatewayProcess, key: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vlgate.cli", "reload", "--url", gw.url, "--api-key", key],
                          capture_output=True, text=True, timeout=30, check=False)


def status(gw: GatewayProcess, key: str, model: str = "youtu-vl") -> int:
    r = httpx.post(gw.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"}, timeout=60,
                   json={"model": model, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]})
    return r.status_code


def config_state(gw: GatewayProcess, key: str = K1) -> dict[str, Any]:
    return httpx.get(gw.url + "/ready", headers={"Authorization": f"Bearer {key}"}, timeout=5).json()


def test_reload_under_steady_load(llama_server, tmp_path: Path) -> None:
    a, b = llama_server(slots=2, ctx=2048), llama_server(slots=2, ctx=2048)
    first = {"gateway": {"api_keys": [K1], "queue": {"size": 64}}, "backends": [{"url": a.url, "name": "a"}]}
    gw = GatewayProcess(first, tmp_path).start()
    try:
        gw.wait_ready()
        assert status(gw, K2) == 401
        with Load(gw.url, api_key=K1) as load:
            wait_until(lambda: load.ok >= 4, 30, "first answers")
            # b joins, a leaves, a second key, a preset, new limits and timeouts
            rewrite(gw, {"gateway": {"api_keys": [K1, K2], "queue": {"size": 32, "timeout_s": 20},
                                     "request_timeout_s": 120, "health": {"interval_s": 0.5}},
                         "backends": [{"url": b.url, "name": "b"}],
                         "presets": {"haiku": {"description": "a haiku", "prompt": "Write a haiku.", "image": "none"}}})
            started = time.monotonic()
            done = vlgate_reload(gw, K1)
            took = time.monotonic() - started
            assert done.returncode == 0 and done.stdout.startswith("reloaded: generation 2"), done.stdout + done.stderr
            assert "backend b joins" in done.stdout and "backend a drains" in done.stdout
            for change in ("gateway.api_keys", "gateway.queue", "gateway.request_timeout_s", "presets"):
                assert f"{change} applied" in done.stdout
            assert status(gw, K2) == 200  # the new key, on a new request
            assert status(gw, K1, "youtu-vl:haiku") == 200  # the new preset
            joined = wait_until(lambda: any(x["name"] == "b" and x["served"] > 0 for x in config_state(gw)["backends"]),
                                20, "b serving")
            gone = wait_until(lambda: [x["name"] for x in config_state(gw)["backends"]] == ["b"], 30, "a gone")
            # SIGHUP straight to the process (what `systemctl reload` does): the second key goes again
            rewrite(gw, {"gateway": {"api_keys": [K1]}, "backends": [{"url": b.url, "name": "b"}]})
            assert gw.proc is not None
            os.kill(gw.proc.pid, signal.SIGHUP)
            hup = wait_until(lambda: config_state(gw)["config"]["generation"] == 3, 10, "generation 3")
            assert status(gw, K2) == 401
            ok_before = load.ok
            wait_until(lambda: load.ok >= ok_before + 4, 30, "answers after the reloads")
        assert load.failed == [] and load.ok > 8
        applied = re.findall(r"config reloaded in (\d+) ms", gw.log())
        print(f"\n[reload] applied in {', '.join(applied)} ms (gateway log); `vlgate reload` round trip {took:.2f}s; new backend serving {joined:.2f}s later, the removed "
              f"one drained and gone after {gone:.2f}s more; SIGHUP to new generation {hup:.2f}s; "
              f"{load.ok} requests under load, 0 failed")
    finally:
        gw.stop()


def test_an_invalid_file_is_refused_and_the_old_config_stays(llama_server, tmp_path: Path) -> None:
    a = llama_server(slots=1, ctx=1024)
    good = {"gateway": {"api_keys": [K1]}, "backends": [{"url": a.url}]}
    gw = GatewayProcess(good, tmp_path).start()
    try:
        gw.wait_ready()
        rewrite(gw, {"gateway": {"api_keys": [K2], "queue": {"size": -1}}, "backends": [{"url": a.url}]})
        done = vlgate_reload(gw, K1)
        assert done.returncode == 1
        assert "reload refused" in done.stdout and "gateway.queue.size" in done.stdout
        ready = httpx.get(gw.url + "/ready", headers={"Authorization": f"Bearer {K1}"})
        assert ready.status_code == 200  # still serving, on the old config
        assert ready.json()["config"]["generation"] == 1
        assert "gateway.queue.size: Input should be greater than or equal to 0" in ready.json()["config"]["reload_error"]
        assert "config reload refused" in gw.log()
        assert status(gw, K1) == 200 and status(gw, K2) == 401  # the old keys
        gw.config_path.write_text("gateway: [unclosed\n")
        assert vlgate_reload(gw, K1).returncode == 1
        assert "not valid YAML" in config_state(gw)["config"]["reload_error"]
        rewrite(gw, good)  # fixed: the next reload applies and clears the error
        assert vlgate_reload(gw, K1).returncode == 0
        assert config_state(gw)["config"]["reload_error"] == ""
    finally:
        gw.stop()
