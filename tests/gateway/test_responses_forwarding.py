"""What the gateway forwards on /v1/responses, seen by a recording backend: normalized images only,
`text.format` mapped to `response_format`, no client headers, nothing stateful."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from typing import Any

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
    with fake_behind_gateway(tmp_path_factory.mktemp("responses-fwd")) as started:
        yield started


def png(size: tuple[int, int] = (1000, 700)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def post(gw: GatewayProcess, body: dict[str, Any], path: str = "/v1/responses", **headers: str) -> httpx.Response:
    return httpx.post(gw.url + path, json={"model": "youtu-vl", **body}, headers=headers, timeout=30)


def last_body(fb: FakeBackend, path: str = "/v1/responses") -> dict[str, Any]:
    seen = [s for s in fb.seen if s.path == path]
    assert seen, f"nothing reached {path}"
    return json.loads(seen[-1].body)


def grid_size(url: str) -> tuple[int, int]:
    assert url.startswith("data:image/"), url[:40]
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).size


def test_images_in_messages_and_tool_outputs_arrive_grid_sized(recorded) -> None:
    gw, fb = recorded
    r = post(gw, {"input": [
        {"role": "user", "content": [{"type": "input_image", "image_url": png()},
                                     {"type": "input_text", "text": "what is it?"}]},
        {"type": "function_call", "call_id": "c1", "name": "camera", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1",
         "output": [{"type": "input_image", "image_url": png((300, 200))}]}]})
    assert r.status_code == 200, r.text
    body = last_body(fb)
    assert grid_size(body["input"][0]["content"][0]["image_url"]) == (1024, 704)
    assert grid_size(body["input"][2]["output"][0]["image_url"]) == (320, 224)


@pytest.mark.parametrize("path", ["/v1/responses", "/v1/responses/input_tokens"])
def test_url_images_to_private_addresses_are_refused_without_a_connection(recorded, path: str) -> None:
    gw, fb = recorded
    host = CountingListener()
    before = len(fb.seen)
    try:
        for url in (host.url, host.url.replace("127.0.0.1", "localhost"), "http://169.254.169.254/x.png"):
            r = post(gw, {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": url}]}]},
                     path)
            assert r.status_code == 400, r.text
            assert r.json()["error"]["param"] == "input[0].content[0].image_url"
        assert host.connections == 0
        assert len([s for s in fb.seen[before:] if not s.path.startswith(("/health", "/slots", "/props"))]) == 0
    finally:
        host.close()


def test_file_id_images_and_files_are_a_clear_400(recorded) -> None:
    gw, _ = recorded
    r = post(gw, {"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "file-1"}]}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "input[0].content[0].file_id"
    assert "file_id" in r.json()["error"]["message"]
    r = post(gw, {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "file-1"}]}]})
    assert r.status_code == 400 and r.json()["error"]["param"].startswith("input[0].content[0]")


def test_previous_response_id_is_refused_before_the_backend(recorded) -> None:
    gw, fb = recorded
    before = len(fb.seen)
    r = post(gw, {"input": "again", "previous_response_id": "resp_123"})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["param"] == "previous_response_id" and err["code"] == "previous_response_not_found"
    assert r.headers.get("x-should-retry") in (None, "false")
    assert not [s for s in fb.seen[before:] if s.path == "/v1/responses"]


def test_text_format_json_schema_becomes_response_format(recorded) -> None:
    gw, fb = recorded
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    r = post(gw, {"input": "where?", "text": {"format": {"type": "json_schema", "name": "place", "schema": schema,
                                                         "strict": True}}})
    assert r.status_code == 200, r.text
    assert last_body(fb)["response_format"] == {"type": "json_schema",
                                                "json_schema": {"name": "place", "schema": schema, "strict": True}}
    post(gw, {"input": "json", "text": {"format": {"type": "json_object"}}})
    assert last_body(fb)["response_format"] == {"type": "json_object"}


def test_client_headers_are_not_forwarded(recorded) -> None:
    gw, fb = recorded
    r = post(gw, {"input": "hi"}, **{"X-Conversation-Id": "conv-1", "X-Api-Key": "k", "Authorization": "Bearer k",
                                     "Cookie": "a=b"})
    assert r.status_code == 200
    seen = [s for s in fb.seen if s.path == "/v1/responses"][-1]
    # the gateway's own request id goes along (to follow one request across systems); nothing of the client's
    assert set(seen.headers) <= {"host", "content-type", "content-length", "accept", "x-request-id"}, seen.headers
