"""Faults a real llama-server cannot show on demand (scripted fake backend), and retries around them."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import openai
import pytest

from support.fakebackend import FakeBackend
from support.gateway_process import GatewayProcess
from support.llama import free_port

CHAT = {"model": "youtu-vl", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def fakes():
    started: list[FakeBackend] = []

    def make(**kw) -> FakeBackend:
        fb = FakeBackend(**kw).start()
        started.append(fb)
        return fb

    yield make
    for fb in started:
        fb.stop()


@pytest.fixture
def gateway(tmp_path: Path):
    started: list[GatewayProcess] = []

    def make(backends: list[str], **gateway_cfg) -> GatewayProcess:
        gw = GatewayProcess({"backends": [{"url": u} for u in backends], "gateway": gateway_cfg}, tmp_path).start()
        started.append(gw)
        return gw

    yield make
    for gw in started:
        gw.stop()


def test_connect_error_retries_on_another_backend(fakes, gateway) -> None:
    good = fakes()
    dead_url = f"http://127.0.0.1:{free_port()}"  # nothing listens here
    gw = gateway([dead_url, good.url], health={"interval_s": 60})
    gw.wait_ready(backends=1)
    for _ in range(4):
        r = httpx.post(gw.url + "/v1/chat/completions", json=CHAT)
        assert r.status_code == 200
    assert len(good.chat_requests()) == 4


def test_stream_first_byte_timeout_retries_elsewhere(fakes, gateway) -> None:
    hang, good = fakes(mode="hang"), fakes()
    gw = gateway([hang.url, good.url], retry={"first_byte_timeout_s": 0.3, "attempts": 3})
    gw.wait_ready(backends=2)
    for i in range(3):
        r = httpx.post(gw.url + "/v1/chat/completions", timeout=10,
                       json={**CHAT, "stream": True, "messages": [{"role": "user", "content": f"q{i}"}]})
        assert r.status_code == 200 and r.text.rstrip().endswith("data: [DONE]")
    assert len(good.chat_requests()) == 3


def test_slow_non_stream_answer_is_not_replayed(fakes, gateway) -> None:
    """llama-server sends non-stream headers only with the whole answer: slowness is not a fault."""
    slow = fakes(delay_s=0.6)
    other = fakes(delay_s=0.6)
    gw = gateway([slow.url, other.url], retry={"first_byte_timeout_s": 0.2}, request_timeout_s=5)
    gw.wait_ready(backends=2)
    r = httpx.post(gw.url + "/v1/chat/completions", json=CHAT, timeout=10)
    assert r.status_code == 200
    assert len(slow.chat_requests()) + len(other.chat_requests()) == 1
    gw2 = gateway([slow.url], request_timeout_s=0.2)
    gw2.wait_ready()
    r = httpx.post(gw2.url + "/v1/chat/completions", json=CHAT, timeout=10)
    assert r.status_code == 503 and r.json()["error"]["code"] == "backend_timeout"
    assert r.headers["x-should-retry"] == "false"


def test_stalled_stream_ends_with_error_event(fakes, gateway) -> None:
    stall = fakes(mode="stall_after", die_after=2)
    gw = gateway([stall.url], stream_idle_timeout_s=0.5)
    gw.wait_ready()
    r = httpx.post(gw.url + "/v1/chat/completions", timeout=10, json={**CHAT, "stream": True})
    events = [e for e in r.text.split("\n\n") if e.strip()]
    assert len(events) == 3 and '"error"' in events[-1]
    assert "[DONE]" not in r.text


def test_loading_503_retried_then_final_failure_says_no_retry(fakes, gateway) -> None:
    a = fakes(mode="loading")
    gw = gateway([a.url], retry={"attempts": 2, "backoff_s": 0.01}, queue={"timeout_s": 0.2})
    r = httpx.post(gw.url + "/v1/chat/completions", json=CHAT, timeout=10)
    assert r.status_code == 503
    assert r.headers["x-should-retry"] == "false"
    assert r.json()["error"]["type"] == "service_unavailable"


def test_4xx_and_500_image_errors_are_not_retried(fakes, gateway) -> None:
    bad = fakes(mode="status", status=500,
                status_body=b'{"error":{"code":500,"message":"Failed to load image","type":"server_error"}}')
    other = fakes()
    gw = gateway([bad.url, other.url])
    gw.wait_ready(backends=2)
    seen = 0
    for i in range(4):
        r = httpx.post(gw.url + "/v1/chat/completions",
                       json={**CHAT, "messages": [{"role": "user", "content": str(i)}]})
        if r.status_code != 200:
            # llama-server's 500 for an image it cannot load is the client's fault: a 400, never retried
            assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
            assert "Failed to load image" in r.json()["error"]["message"]
            seen += 1
    assert seen >= 1
    assert len(bad.chat_requests()) == seen  # each went to the bad backend once, never replayed elsewhere
    assert len(other.chat_requests()) == 4 - seen


def test_backend_dying_mid_stream_ends_with_error_event(fakes, gateway) -> None:
    dying = fakes(mode="die_after", die_after=3)
    gw = gateway([dying.url])
    gw.wait_ready()
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0, _strict_response_validation=True)
    got = []
    with pytest.raises(openai.APIError) as exc:
        for chunk in client.chat.completions.create(model="youtu-vl", stream=True, messages=CHAT["messages"]):
            got.append(chunk)
    assert len(got) == 3
    assert "incomplete" in str(exc.value)
    state = {b["name"]: b for b in gw.ready()["backends"]}["backend-0"]
    assert state["in_flight"] == 0


def test_backend_dying_mid_body_is_a_clean_503(fakes, gateway) -> None:
    cut = fakes(mode="cut_body")
    gw = gateway([cut.url])
    gw.wait_ready()
    r = httpx.post(gw.url + "/v1/chat/completions", json=CHAT, timeout=10)
    assert r.status_code == 503 and r.json()["error"]["code"] == "backend_error"
    assert r.headers["x-should-retry"] == "false"
    assert "Traceback" not in gw.log()


def test_garbage_from_backend_is_a_clean_error(fakes, gateway) -> None:
    junk = fakes(mode="garbage")
    gw = gateway([junk.url], retry={"attempts": 2, "backoff_s": 0.01}, queue={"timeout_s": 0.2})
    gw.wait_ready()
    r = httpx.post(gw.url + "/v1/chat/completions", json=CHAT, timeout=10)
    assert r.status_code == 503
    assert r.json()["error"]["message"]
    assert httpx.get(gw.url + "/health").status_code == 200  # the gateway keeps serving


def test_body_is_forwarded_untouched(fakes, gateway) -> None:
    fb = fakes()
    gw = gateway([fb.url])
    gw.wait_ready()
    body = {**CHAT, "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
            "tool_choice": "auto", "cache_prompt": True}
    raw = json.dumps(body).encode()
    r = httpx.post(gw.url + "/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 200
    assert fb.chat_requests()[0].body == raw


def test_client_key_never_forwarded_backend_key_sent(fakes, tmp_path: Path) -> None:
    fb = fakes()
    gw = GatewayProcess({"backends": [{"url": fb.url, "api_key": "backend-secret"}],
                         "gateway": {"api_keys": ["client-secret"], "log_json": True}}, tmp_path).start()
    try:
        gw.wait_ready()
        r = httpx.post(gw.url + "/v1/chat/completions", json=CHAT, headers={"Authorization": "Bearer client-secret"})
        assert r.status_code == 200
        seen = fb.chat_requests()[0].headers
        assert seen["authorization"] == "Bearer backend-secret"
        assert "client-secret" not in json.dumps([s.headers for s in fb.seen])
    finally:
        gw.stop()
    assert "client-secret" not in gw.log()


def test_a_client_that_leaves_after_the_last_event_had_a_whole_answer(fakes, gateway) -> None:
    """The SDKs close a stream on [DONE]; the backend's own end may come later. That request is a 200 in the
    metrics and the key's usage (it was a 499 before: the disconnect cancelled it while the end was awaited)."""
    fb = fakes(mode="late_end")
    gw = gateway([fb.url])
    gw.wait_ready(backends=1)
    with httpx.stream("POST", gw.url + "/v1/chat/completions", json={**CHAT, "stream": True}, timeout=10) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line == "data: [DONE]":
                break  # and leave, as the openai SDK does
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        metrics = httpx.get(gw.url + "/metrics").text
        if 'vlgate_requests_total{route="chat",status=' in metrics:
            break
        time.sleep(0.1)
    assert 'vlgate_requests_total{route="chat",status="200"} 1.0' in metrics, metrics
    assert 'status="499"' not in metrics
