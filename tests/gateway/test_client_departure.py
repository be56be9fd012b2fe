"""A client that closes its connection while its request runs: the gateway lets go at once (its slot, the
upstream connection), including for the first of pipelined requests, which uvicorn's own disconnect flag
(set on its newest request only) does not reach. The backend generates slowly (support/wedged.py: a
real llama-server answers a long request in well under a second), so a request the gateway kept running
would hold its place for ~20 s."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.gateway_process import GatewayProcess
from support.wait import wait_until
from support.wedged import WedgedBackend

pytestmark = pytest.mark.slow


@pytest.fixture
def slow_fleet(tmp_path: Path) -> Iterator[tuple[GatewayProcess, WedgedBackend]]:
    backend = WedgedBackend(tokens=1000, token_s=0.02).start()
    gw = GatewayProcess({"backends": [{"url": backend.url, "name": "slow"}]}, tmp_path).start()
    try:
        gw.wait_ready(backends=1)
        yield gw, backend
    finally:
        gw.stop()
        backend.stop()


def request(gw: GatewayProcess, stream: bool) -> bytes:
    body = json.dumps({"model": "youtu-vl", "stream": stream, "max_tokens": 1000,
                       "messages": [{"role": "user", "content": "a long answer"}]}).encode()
    host = gw.url.removeprefix("http://")
    return (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


@pytest.mark.parametrize("pipelined", [False, True], ids=["one request", "first of two pipelined"])
def test_a_client_that_closes_mid_request_frees_its_place(slow_fleet, pipelined: bool) -> None:
    gw, backend = slow_fleet
    host, port = gw.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(request(gw, stream=False) + (request(gw, stream=False) if pipelined else b""))
        wait_until(lambda: gw.ready()["in_flight"] == 1 and len(backend.busy) == 1, 10, "the request at the backend")
    took = wait_until(lambda: gw.ready()["in_flight"] == 0, 3, "the gateway let go of the request")
    print(f"\nreleased {took * 1000:.0f} ms after the client closed")
    # the gateway keeps serving, and the pipelined second request never ran
    assert backend.tasks == 1
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: " + gw.url.removeprefix("http://").encode() + b"\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 200")
