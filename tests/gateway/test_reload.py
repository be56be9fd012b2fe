"""Hot reload (`vlgate reload` and SIGHUP) under steady load: backends join and drain, keys, presets
and limits change for new requests, not one request fails; a broken file is refused and the old
config keeps running. `vlgate reload` signals only the process holding the URL's listening socket."""

from __future__ import annotations

import http.server
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from support.fakebackend import FakeBackend
from support.gateway_process import GatewayProcess
from support.llama import free_port
from support.load import Load
from support.wait import wait_until

pytestmark = pytest.mark.slow

K1, K2 = "key-one-0123456789", "key-two-0123456789"
OPS = {"name": "ops", "key": K1, "admin": True}  # `vlgate reload` reads the config state: an admin key's view


def rewrite(gw: GatewayProcess, config: dict[str, Any]) -> None:
    """The file as an operator would edit it (the gateway's port kept)."""
    data = {**config, "gateway": {"model": "youtu-vl", "drain_delay_s": 0, **config.get("gateway", {}),
                                  "port": gw.port}}
    gw.config_path.write_text(yaml.safe_dump(data))


def vlgate_reload(gw: GatewayProcess | str, key: str, *extra: str) -> subprocess.CompletedProcess[str]:
    url = gw if isinstance(gw, str) else gw.url
    return subprocess.run([sys.executable, "-m", "vlgate.cli", "reload", "--url", url, "--api-key", key, *extra],
                          capture_output=True, text=True, timeout=30, check=False)


def status(gw: GatewayProcess, key: str, model: str = "youtu-vl") -> int:
    r = httpx.post(gw.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"}, timeout=60,
                   json={"model": model, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]})
    return r.status_code


def config_state(gw: GatewayProcess, key: str = K1) -> dict[str, Any]:
    return httpx.get(gw.url + "/ready", headers={"Authorization": f"Bearer {key}"}, timeout=5).json()


def test_reload_under_steady_load(llama_server, tmp_path: Path) -> None:
    a, b = llama_server(slots=2, ctx=2048), llama_server(slots=2, ctx=2048)
    first = {"gateway": {"api_keys": [OPS], "queue": {"size": 64}}, "backends": [{"url": a.url, "name": "a"}]}
    gw = GatewayProcess(first, tmp_path).start()
    try:
        gw.wait_ready()
        assert status(gw, K2) == 401
        with Load(gw.url, api_key=K1) as load:
            wait_until(lambda: load.ok >= 4, 30, "first answers")
            # b joins, a leaves, a second key, a preset, new limits and timeouts
            rewrite(gw, {"gateway": {"api_keys": [OPS, K2], "queue": {"size": 32, "timeout_s": 20},
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
            rewrite(gw, {"gateway": {"api_keys": [OPS]}, "backends": [{"url": b.url, "name": "b"}]})
            assert gw.proc is not None
            os.kill(gw.proc.pid, signal.SIGHUP)
            hup = wait_until(lambda: config_state(gw)["config"]["generation"] == 3, 10, "generation 3")
            assert status(gw, K2) == 401
            ok_before = load.ok
            wait_until(lambda: load.ok >= ok_before + 4, 30, "answers after the reloads")
        assert load.failed == [] and load.ok > 8
        applied = re.findall(r"config reloaded in (\d+) ms", gw.log())
        print(f"\n[reload] applied in {', '.join(applied)} ms (gateway log); `vlgate reload` round trip {took:.2f}s; "
              f"new backend serving {joined:.2f}s later, the removed one drained and gone after {gone:.2f}s more; "
              f"SIGHUP to new generation {hup:.2f}s; "
              f"{load.ok} requests under load, 0 failed")
    finally:
        gw.stop()


def test_an_invalid_file_is_refused_and_the_old_config_stays(llama_server, tmp_path: Path) -> None:
    a = llama_server(slots=1, ctx=1024)
    good = {"gateway": {"api_keys": [OPS]}, "backends": [{"url": a.url}]}
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
        reload_error = ready.json()["config"]["reload_error"]
        assert "gateway.queue.size: Input should be greater than or equal to 0" in reload_error
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


class _Liar(http.server.BaseHTTPRequestHandler):
    """A server on some port that names another process as the gateway (the attack `reload` must refuse)."""

    victim = 0

    def do_GET(self) -> None:
        body = json.dumps({"status": "ready", "pid": self.victim, "backends": [],
                           "config": {"generation": 1, "refused_at": None, "reload_error": ""}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_reload_signals_only_the_process_holding_the_socket(tmp_path: Path) -> None:
    # a process of ours with "vlgate" in its command line (what the old check trusted); SIGHUP would kill it
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "vlgate"])
    _Liar.victim = victim.pid
    liar = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), _Liar)
    threading.Thread(target=liar.serve_forever, daemon=True).start()
    fb = FakeBackend().start()
    gw = GatewayProcess({"gateway": {"api_keys": [OPS, K2]}, "backends": [{"url": fb.url}]}, tmp_path).start()
    try:
        gw.wait_ready()
        lied = vlgate_reload(f"http://127.0.0.1:{liar.server_address[1]}", K1)
        assert lied.returncode == 2 and f"process {victim.pid} does not hold the socket" in lied.stderr, lied.stderr
        # --pid is checked too: the victim does not serve the gateway's URL
        named = vlgate_reload(gw, K1, "--pid", str(victim.pid))
        assert named.returncode == 2 and "does not hold the socket" in named.stderr, named.stderr
        gone = vlgate_reload(f"http://127.0.0.1:{free_port()}", K1, "--pid", str(victim.pid))
        assert gone.returncode == 2
        time.sleep(0.3)
        assert victim.poll() is None  # never signalled
        assert config_state(gw)["config"]["generation"] == 1
        user = vlgate_reload(gw, K2)  # a user key does not see the pid
        assert user.returncode == 2 and "admin key" in user.stderr, user.stderr
        done = vlgate_reload(gw, K1)  # the gateway itself holds its socket: reloaded
        assert done.returncode == 0 and done.stdout.startswith("reloaded: generation 2"), done.stdout + done.stderr
        done = vlgate_reload(gw.url.replace("127.0.0.1", "localhost"), K1)
        assert done.returncode == 0, done.stderr
    finally:
        victim.kill()
        victim.wait()
        liar.shutdown()
        gw.stop()
        fb.stop()
