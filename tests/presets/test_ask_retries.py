"""`vlgate ask` under load: retries after 429/503/resets within bounds, per-image failures, OPENAI_* fallbacks.

The gateway here is a scripted HTTP server on loopback (a thread of this process): it answers each request
as the test says and records when and with which key it came, so the waits can be measured server-side.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from vlgate.cli.ask import Tries, gateway_url

ANSWER = {"choices": [{"message": {"role": "assistant", "content": "a thing"}}], "vlgate": {"boxes": []}}


@dataclass
class Seen:
    path: str
    at: float
    authorization: str | None
    body: str


# (request number among the chat completions, body) -> (status, headers, JSON) or None: drop the connection
Script = Callable[[int, str], tuple[int, dict[str, str], dict[str, Any]] | None]


@dataclass
class Scripted:
    script: Script
    seen: list[Seen] = field(default_factory=list)
    url: str = ""

    def chats(self) -> list[Seen]:
        return [s for s in self.seen if s.path == "/v1/chat/completions"]


@pytest.fixture
def server() -> Iterator[Callable[[Script], Scripted]]:
    started: list[ThreadingHTTPServer] = []

    def start(script: Script) -> Scripted:
        state = Scripted(script)
        lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def answer(self, status: int, headers: dict[str, str], payload: dict[str, Any]) -> None:
                raw = json.dumps(payload).encode()
                self.send_response(status)
                for k, v in {"Content-Type": "application/json", "Content-Length": str(len(raw)), **headers}.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(raw)

            def record(self, body: str) -> int:
                with lock:
                    state.seen.append(Seen(self.path, time.monotonic(), self.headers.get("Authorization"), body))
                    return len(state.chats())

            def do_GET(self) -> None:
                self.record("")
                self.answer(200, {}, {"object": "list", "data": [{"id": "youtu-vl", "object": "model"}]})

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0"))).decode()
                n = self.record(body)
                reply = state.script(n, body)
                if reply is None:  # a reset: close without a word
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.answer(*reply)

        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        httpd.daemon_threads = True
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        started.append(httpd)
        state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
        return state

    yield start
    for httpd in started:
        httpd.shutdown()
        httpd.server_close()


def error(status: int, message: str, retry_after: str | None = None) -> tuple[int, dict[str, str], dict[str, Any]]:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return status, headers, {"error": {"message": message, "type": "server_busy", "code": "busy"}}


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("VLGATE_URL", "VLGATE_API_KEY", "OPENAI_BASE_URL", "OPENAI_API_KEY")}
    return {**env, **extra}


def vlgate_ask(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vlgate.cli", "ask", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=120, check=False, env=env or clean_env())


def image(path: Path, shade: int) -> str:
    """A small PNG; returns its base64 (what the request body carries)."""
    Image.new("RGB", (32, 32), (shade, shade, shade)).save(path)
    return base64.b64encode(path.read_bytes()).decode()


def test_503_with_retry_after_is_waited_out_and_the_image_succeeds(server: Callable[[Script], Scripted],
                                                                   tmp_path: Path) -> None:
    gw = server(lambda n, _: error(503, "all backends busy", "1") if n <= 2 else (200, {}, ANSWER))
    image(tmp_path / "x.png", 10)
    r = vlgate_ask("detect", "x.png", "--url", gw.url, "--no-overlay", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    line = json.loads(r.stdout)
    assert line["ok"] is True and line["text"] == "a thing" and line["retries"] == 2
    chats = gw.chats()
    assert len(chats) == 3
    gaps = [b.at - a.at for a, b in itertools.pairwise(chats)]
    assert all(1.0 <= g < 3.0 for g in gaps), gaps  # Retry-After: 1 honoured (plus at most 10% jitter)
    assert r.stderr.count("vlgate ask:") == 0


def two_images(folder: Path) -> tuple[Path, str]:
    """A folder of a.png (small) and b.png; returns the folder and a.png's marker in request bodies."""
    folder.mkdir()
    first = image(folder / "a.png", 10)
    image(folder / "b.png", 200)
    return folder, first


def test_always_429_fails_that_image_after_the_bound_and_the_folder_goes_on(server: Callable[[Script], Scripted],
                                                                           tmp_path: Path) -> None:
    folder, busy = two_images(tmp_path / "uploads")
    gw = server(lambda n, body: error(429, "rate limit: 1 request per minute", "0") if busy in body
                else (200, {}, ANSWER))
    r = vlgate_ask("detect", str(folder), "--url", gw.url, "--no-overlay", "--concurrency", "1", "--retries", "3",
                   cwd=tmp_path)
    assert r.returncode == 1
    lines = {Path(d["image"]).name: d for d in map(json.loads, r.stdout.splitlines())}
    assert lines["b.png"]["ok"] is True  # the next image still ran
    failed = lines["a.png"]
    assert failed["ok"] is False and failed["retries"] == 3
    assert failed["error"] == "429: rate limit: 1 request per minute (gave up after 3 retries)"
    assert sum(busy in s.body for s in gw.chats()) == 4  # the first try and 3 retries, no more
    assert f"vlgate ask: {folder / 'a.png'}: 429: rate limit" in r.stderr
    assert "b.png" not in r.stderr


def test_default_bounds_give_up_at_once_on_a_retry_after_beyond_the_budget(server: Callable[[Script], Scripted],
                                                                           tmp_path: Path) -> None:
    gw = server(lambda n, _: error(429, "slow down", "120"))
    image(tmp_path / "x.png", 10)
    started = time.monotonic()
    r = vlgate_ask("detect", "x.png", "--url", gw.url, "--no-overlay", cwd=tmp_path)
    assert time.monotonic() - started < 30
    assert r.returncode == 1
    line = json.loads(r.stdout)
    assert not line["ok"] and "Retry-After 120 s is more than the 60 s left of the 60 s retry budget" in line["error"]
    assert len(gw.chats()) == 1
    assert r.stderr.strip().endswith(f"x.png: {line['error']}")


def test_a_reset_connection_is_retried_and_other_4xx_are_not(server: Callable[[Script], Scripted],
                                                             tmp_path: Path) -> None:
    folder, bad = two_images(tmp_path / "in")
    resets = [0]

    def script(n: int, body: str) -> tuple[int, dict[str, str], dict[str, Any]] | None:
        if bad in body:
            return error(400, "the image could not be decoded")
        resets[0] += 1
        return None if resets[0] == 1 else (200, {}, ANSWER)

    gw = server(script)
    r = vlgate_ask("detect", str(folder), "--url", gw.url, "--no-overlay", "--concurrency", "1", cwd=tmp_path)
    assert r.returncode == 1
    lines = {Path(d["image"]).name: d for d in map(json.loads, r.stdout.splitlines())}
    assert lines["a.png"]["error"] == "400: the image could not be decoded" and "retries" not in lines["a.png"]
    assert sum(bad in s.body for s in gw.chats()) == 1
    assert lines["b.png"]["ok"] is True and lines["b.png"]["retries"] == 1


def test_a_refused_connection_is_retried_then_reported(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    image(tmp_path / "x.png", 10)
    r = vlgate_ask("detect", "x.png", "--url", f"http://127.0.0.1:{port}", "--no-overlay", "--retries", "2",
                   cwd=tmp_path)
    assert r.returncode == 1
    line = json.loads(r.stdout)
    assert line["error"].startswith("ConnectError: ") and line["error"].endswith("(gave up after 2 retries)")
    assert line["retries"] == 2
    assert "vlgate ask: x.png: ConnectError: " in r.stderr


def test_openai_base_url_and_api_key_are_the_fallbacks(server: Callable[[Script], Scripted], tmp_path: Path) -> None:
    gw = server(lambda n, _: (200, {}, ANSWER))
    image(tmp_path / "x.png", 10)
    r = vlgate_ask("detect", "x.png", "--no-overlay", cwd=tmp_path,
                   env=clean_env(OPENAI_BASE_URL=gw.url + "/v1/", OPENAI_API_KEY="sk-openai"))
    assert r.returncode == 0, r.stderr
    assert [(s.path, s.authorization) for s in gw.seen] == [("/v1/models", "Bearer sk-openai"),
                                                           ("/v1/chat/completions", "Bearer sk-openai")]
    # VLGATE_* come before OPENAI_*, the options before both
    gw.seen.clear()
    r = vlgate_ask("detect", "x.png", "--no-overlay", cwd=tmp_path,
                   env=clean_env(OPENAI_BASE_URL="http://127.0.0.1:9/v1", OPENAI_API_KEY="sk-openai",
                                 VLGATE_URL=gw.url, VLGATE_API_KEY="vl-key"))
    assert r.returncode == 0, r.stderr
    assert {s.authorization for s in gw.seen} == {"Bearer vl-key"}
    gw.seen.clear()
    r = vlgate_ask("detect", "x.png", "--no-overlay", "--url", gw.url, "--key", "opt", cwd=tmp_path,
                   env=clean_env(VLGATE_URL="http://127.0.0.1:9", VLGATE_API_KEY="vl-key"))
    assert r.returncode == 0, r.stderr
    assert {s.authorization for s in gw.seen} == {"Bearer opt"}


def test_url_resolution_and_the_backoff_schedule() -> None:
    assert gateway_url(None, {}) == "http://127.0.0.1:8000"
    assert gateway_url(None, {"OPENAI_BASE_URL": "https://api.example/v1"}) == "https://api.example"
    assert gateway_url(None, {"VLGATE_URL": "http://a:1/", "OPENAI_BASE_URL": "http://b:2/v1"}) == "http://a:1"
    assert gateway_url("http://c:3/v1", {"VLGATE_URL": "http://a:1"}) == "http://c:3"
    tries = Tries(retries=6, budget_s=60.0)
    waits = [tries.wait_for(None) for _ in range(7)]
    caps = [0.5, 1, 2, 4, 8, 8]
    assert all(isinstance(w, float) and c / 2 <= w <= c for w, c in zip(waits, caps, strict=False)), waits
    assert waits[6] == "gave up after 6 retries"
    tight = Tries(retries=6, budget_s=5.0)
    assert tight.wait_for(4.0) == pytest.approx(4.0, abs=0.41)
    assert isinstance(tight.wait_for(4.0), str)  # past the budget: no fifth second of waiting
