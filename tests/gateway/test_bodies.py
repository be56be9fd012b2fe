"""Request bodies are bounded in time (408) and in bytes held across all connections (503 + Retry-After):
a client that declares a body and goes silent holds nothing for long, and many cannot fill the host."""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

from support.fakebackend import FakeBackend
from support.gateway_process import GatewayProcess

HELLO = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory):
    fb = FakeBackend().start()
    gw = GatewayProcess({"backends": [{"url": fb.url}],
                         "gateway": {"limits": {"body_timeout_s": 1.0, "max_buffered_bytes": MIB}}},
                        tmp_path_factory.mktemp("bodies")).start()
    gw.wait_ready()
    yield gw
    gw.stop()
    fb.stop()


def stalled(port: int, declared: int, sent: bytes) -> socket.socket:
    """A client that declares `declared` bytes of body, sends `sent` and goes silent."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
              b"Content-Length: " + str(declared).encode() + b"\r\n\r\n" + sent)
    return s


def answer_of(s: socket.socket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        assert chunk, data
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    while len(body) < int(headers["content-length"]):
        body += s.recv(65536)
    return int(lines[0].split()[1]), headers, body


def test_a_body_that_stops_coming_gets_408_and_frees_its_place(gw: GatewayProcess) -> None:
    port = int(gw.url.rsplit(":", 1)[1])
    s = stalled(port, 100_000, b'{"messages": [')
    t0 = time.monotonic()
    status, headers, body = answer_of(s)
    waited = time.monotonic() - t0
    s.close()
    assert status == 408 and json.loads(body)["error"]["code"] == "request_timeout"
    assert 0.8 <= waited < 5, waited
    assert headers.get("connection") == "close"
    assert httpx.post(gw.url + "/v1/chat/completions", json=HELLO, timeout=10).status_code == 200


def test_bodies_held_across_connections_are_capped(gw: GatewayProcess) -> None:
    port = int(gw.url.rsplit(":", 1)[1])
    hogs = [stalled(port, 400_000, b"{") for _ in range(2)]  # 800 KB declared of the 1 MiB budget
    try:
        time.sleep(0.2)
        big = {**HELLO, "pad": "x" * 300_000}  # 300 KB more would pass the budget
        refused = httpx.post(gw.url + "/v1/chat/completions", json=big, timeout=10)
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "server_busy" and refused.headers["retry-after"] == "1"
        assert httpx.post(gw.url + "/v1/chat/completions", json=HELLO, timeout=10).status_code == 200  # small fits
        assert httpx.get(gw.url + "/health", timeout=2).status_code == 200
        for s in hogs:  # the hogs time out (408) and give their bytes back
            assert answer_of(s)[0] == 408
        assert httpx.post(gw.url + "/v1/chat/completions", json=big, timeout=10).status_code == 200
    finally:
        for s in hogs:
            s.close()


def test_a_body_of_too_many_objects_is_refused_before_it_is_parsed(gw: GatewayProcess) -> None:
    flat = b'{"messages": [' + b",".join([b"{}"] * 300_000) + b"]}"
    r = httpx.post(gw.url + "/v1/chat/completions", content=flat, headers={"Content-Type": "application/json"},
                   timeout=10)
    assert r.status_code == 400 and r.json()["error"]["code"] == "array_above_max_length", r.text
    assert "262144" in r.json()["error"]["message"]
