"""/v1/messages seen by a recording backend: normalized images only, Anthropic's request rules, and every
error (ours, the backend's, mid-stream) in Anthropic's shape."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import pytest
from PIL import Image

from support.fakebackend import FakeBackend
from support.gateway_process import GatewayProcess
from support.listener import CountingListener
from support.stack import fake_behind_gateway

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayProcess, FakeBackend]]:
    with fake_behind_gateway(tmp_path_factory.mktemp("messages-fwd")) as started:
        yield started


@pytest.fixture
def faulty(recorded) -> Iterator[tuple[GatewayProcess, FakeBackend]]:
    """The recording backend, switched to a fault mode by the test; back to normal afterwards."""
    gw, fb = recorded
    yield gw, fb
    fb.mode = "ok"
    gw.wait_ready()  # a mid-stream failure marks the backend suspect until the next health check


def b64png(size: tuple[int, int] = (1000, 700)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def post(gw: GatewayProcess, body: dict[str, Any], path: str = "/v1/messages") -> httpx.Response:
    return httpx.post(gw.url + path, json={"model": "youtu-vl", "max_tokens": 5, **body}, timeout=30)


def assert_anthropic_error(r: httpx.Response, status: int, kind: str) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["type"] == "error" and body["error"]["type"] == kind, body
    return body["error"]["message"]


def test_base64_and_tool_result_images_arrive_grid_sized(recorded) -> None:
    gw, fb = recorded
    r = post(gw, {"messages": [
        {"role": "user", "content": [
            # the claimed media_type is wrong on purpose: the bytes decide
            {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": b64png()}},
            {"type": "text", "text": "what is it?"}]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "camera", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": b64png((300, 200))}}]}]},
    ]})
    assert r.status_code == 200, r.text
    body = json.loads([s for s in fb.seen if s.path == "/v1/messages"][-1].body)
    for source, size in ((body["messages"][0]["content"][0]["source"], (1024, 704)),
                         (body["messages"][2]["content"][0]["content"][0]["source"], (320, 224))):
        assert source["type"] == "base64" and source["media_type"].startswith("image/")
        img = Image.open(io.BytesIO(base64.b64decode(source["data"])))
        assert img.size == size and Image.MIME[img.format] == source["media_type"]


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/messages/count_tokens"])
def test_url_images_to_private_addresses_are_refused_without_a_connection(recorded, path: str) -> None:
    gw, fb = recorded
    host = CountingListener()
    before = len(fb.seen)
    try:
        for url in (host.url, f"http://[::1]:{host.port}/x.png", "http://10.0.0.1/x.png"):
            block = {"type": "image", "source": {"type": "url", "url": url}}
            for content in ([block], [{"type": "tool_result", "tool_use_id": "t", "content": [block]}]):
                r = post(gw, {"messages": [{"role": "user", "content": content}]}, path)
                assert_anthropic_error(r, 400, "invalid_request_error")
        assert host.connections == 0
        assert not [s for s in fb.seen[before:] if s.path.startswith("/v1/")]
    finally:
        host.close()


@pytest.mark.parametrize("body, word", [
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "user", "content": [{"type": "bogus"}]}]}, "messages[0].content[0]"),
    ({"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]}, "messages[0].content[0]"),
    ({"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}]}]},
     "messages[0].content[0]"),
    ({"tools": [{"type": "web_search_20250305", "name": "web_search"}], "messages": [{"role": "user", "content": "x"}]},
     "tools[0]"),
])
def test_bad_requests_are_anthropic_400s(recorded, body: dict[str, Any], word: str) -> None:
    gw, _ = recorded
    assert word in assert_anthropic_error(post(gw, body), 400, "invalid_request_error")


def test_missing_messages_and_max_tokens_are_400_not_500(recorded) -> None:
    gw, _ = recorded
    r = httpx.post(gw.url + "/v1/messages", json={"model": "youtu-vl", "max_tokens": 5}, timeout=10)
    assert "messages" in assert_anthropic_error(r, 400, "invalid_request_error")
    r = httpx.post(gw.url + "/v1/messages", json={"model": "youtu-vl", "messages": [{"role": "user", "content": "x"}]},
                   timeout=10)
    assert "max_tokens" in assert_anthropic_error(r, 400, "invalid_request_error")
    r = httpx.post(gw.url + "/v1/messages", content=b"{not json", headers={"content-type": "application/json"})
    assert_anthropic_error(r, 400, "invalid_request_error")


def test_unknown_model_is_an_anthropic_404(recorded) -> None:
    gw, _ = recorded
    message = assert_anthropic_error(post(gw, {"model": "claude-9", "messages": [{"role": "user", "content": "x"}]}),
                                     404, "not_found_error")
    assert "youtu-vl" in message


def test_backend_errors_become_anthropic_errors(faulty) -> None:
    gw, fb = faulty
    fb.mode, fb.status = "status", 400
    fb.status_body = b'{"error":{"code":400,"message":"bad thing","type":"invalid_request_error"}}'
    r = post(gw, {"messages": [{"role": "user", "content": "x"}]})
    assert assert_anthropic_error(r, 400, "invalid_request_error") == "bad thing"
    assert r.headers["request-id"] == r.headers["x-request-id"]


def test_mid_stream_failure_is_an_anthropic_error_event(faulty) -> None:
    gw, fb = faulty
    fb.mode, fb.die_after = "die_after", 2
    with httpx.stream("POST", gw.url + "/v1/messages", timeout=30, json={
            "model": "youtu-vl", "max_tokens": 5, "stream": True,
            "messages": [{"role": "user", "content": "x"}]}) as r:
        text = r.read().decode()
    last = text.strip().split("\n\n")[-1]
    name, _, data = last.partition("\ndata: ")
    assert name == "event: error"
    assert json.loads(data)["type"] == "error" and json.loads(data)["error"]["type"] == "api_error"
    client = anthropic.Anthropic(base_url=gw.url, api_key="x", max_retries=0)
    with pytest.raises(anthropic.APIStatusError), client.messages.stream(
            model="youtu-vl", max_tokens=5, messages=[{"role": "user", "content": "x"}]) as s:
        for _ in s:
            pass
