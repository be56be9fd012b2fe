"""Hostile backends in front of a real gateway (`vlgate serve`): answers that break HTTP/1.1 framing must
never reach another user, never hold a client past its timeout, and never stop the gateway."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from support.gateway_process import GatewayProcess
from support.hostile import HostileBackend
from support.stack import stopped_at_exit


def chat(text: str) -> dict:
    return {"model": "youtu-vl", "messages": [{"role": "user", "content": text}]}


@pytest.fixture
def hostile(tmp_path: Path) -> Iterator:
    with stopped_at_exit() as started:

        def make(mode: str, **gateway_cfg) -> tuple[GatewayProcess, HostileBackend]:
            fb = HostileBackend(mode=mode).start()
            gw = GatewayProcess({"backends": [{"url": fb.url}], "gateway": gateway_cfg}, tmp_path)
            started.append((gw, fb))
            gw.start()
            gw.wait_ready()
            return gw, fb

        yield make


def test_early_hints_then_the_answer_each_user_gets_their_own(hostile) -> None:
    """Taking the 103 for the answer left the real one on the pooled connection for the next user."""
    gw, fb = hostile("early_hints")
    with httpx.Client(base_url=gw.url, timeout=10) as client:
        for user in ("alice", "bob", "carol"):
            r = client.post("/v1/chat/completions", json=chat(f"question of {user}"))
            assert r.status_code == 200, r.text
            assert r.json()["choices"][0]["message"]["content"] == f"echo: question of {user}"
    assert len(fb.chat_requests()) == 3


def test_half_a_body_then_silence_is_a_5xx_within_the_request_timeout(hostile) -> None:
    gw, fb = hostile("stall_body", request_timeout_s=1.0, outlier={"consecutive_failures": 5})
    with httpx.Client(base_url=gw.url, timeout=30) as client:
        started = time.monotonic()
        r = client.post("/v1/chat/completions", json=chat("stalled"))
        took = time.monotonic() - started
        assert 500 <= r.status_code < 600 and r.status_code == 503, r.text
        err = r.json()["error"]
        assert err["code"] == "backend_error" and err["message"] and err["type"]
        assert 0.9 <= took < 3.0, took  # request_timeout_s bounds the whole answer, not only its headers
        fb.mode = "ok"  # the gateway keeps serving, on a new connection
        r = client.post("/v1/chat/completions", json=chat("after"))
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "echo: after"
        assert client.get("/health").status_code == 200
    assert "Traceback" not in gw.log()


def test_two_hundred_header_fields_are_a_502(hostile) -> None:
    gw, fb = hostile("many_headers", retry={"attempts": 2, "backoff_s": 0.01})
    with httpx.Client(base_url=gw.url, timeout=10) as client:
        r = client.post("/v1/chat/completions", json=chat("big head"))
        assert r.status_code == 502, r.text
        err = r.json()["error"]
        assert err["code"] == "backend_response_too_large" and "header" in err["message"]
        assert len(fb.chat_requests()) == 1  # not replayed: the answer itself is at fault, as NGINX judges it
        fb.mode = "ok"
        r = client.post("/v1/chat/completions", json=chat("small head"))
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "echo: small head"
