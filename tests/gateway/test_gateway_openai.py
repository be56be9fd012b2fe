"""The openai SDK (strict validation) and LangChain against the gateway in front of 2 real llama-servers."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from PIL import Image

from support.gateway_process import GatewayProcess

pytestmark = pytest.mark.slow


@pytest.fixture
def fleet(llama_server, tmp_path: Path) -> Iterator[tuple[GatewayProcess, list]]:
    servers = [llama_server(slots=2, ctx=1024, mmproj=True, extra_args=["--jinja"]) for _ in range(2)]
    gw = GatewayProcess({"backends": [{"url": s.url} for s in servers]}, tmp_path).start()
    gw.wait_ready(backends=2)
    yield gw, servers
    gw.stop()


def client(gw: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", _strict_response_validation=True, max_retries=0)


def png_data_url(size: tuple[int, int] = (40, 30)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def test_chat_non_stream(fleet) -> None:
    gw, _ = fleet
    r = client(gw).chat.completions.create(model="youtu-vl", max_tokens=7,
                                           messages=[{"role": "user", "content": "hello there"}])
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason == "length"
    assert r.usage is not None and r.usage.completion_tokens == 7


def test_chat_stream_with_usage(fleet) -> None:
    gw, _ = fleet
    chunks = list(client(gw).chat.completions.create(
        model="youtu-vl", max_tokens=6, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "count"}]))
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 6
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert any(c.choices and c.choices[0].finish_reason == "length" for c in chunks)


def test_tools_and_response_format_pass_through(fleet) -> None:
    gw, _ = fleet
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "weather",
                                               "parameters": {"type": "object",
                                                              "properties": {"city": {"type": "string"}}}}}]
    r = client(gw).chat.completions.create(model="youtu-vl", max_tokens=5, tools=tools,
                                           messages=[{"role": "user", "content": "weather in Paris?"}])
    assert r.choices[0].message.role == "assistant"
    # the backend's JSON grammar proves response_format reached it (more in test_structured_output.py)
    r = client(gw).chat.completions.create(model="youtu-vl", max_tokens=200, response_format={"type": "json_object"},
                                           messages=[{"role": "user", "content": "json please"}])
    assert r.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(r.choices[0].message.content or ""), dict)


def test_image_content_part(fleet) -> None:
    gw, _ = fleet
    r = client(gw).chat.completions.create(model="youtu-vl", max_tokens=4, messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": png_data_url()}},
        {"type": "text", "text": "what is this?"}]}])
    assert r.usage is not None and r.usage.completion_tokens == 4


def test_models_completions_embeddings(fleet) -> None:
    gw, _ = fleet
    c = client(gw)
    ids = [m.id for m in c.models.list().data]
    assert ids[0] == "youtu-vl"
    r = c.completions.create(model="youtu-vl", prompt="once upon", max_tokens=5)
    assert r.usage is not None and r.usage.completion_tokens == 5
    with pytest.raises(openai.APIStatusError) as exc:
        c.embeddings.create(model="youtu-vl", input="hello")
    # llama-server without --embeddings answers 501; a route no backend supports is the client's 4xx (issue 10)
    assert exc.value.status_code == 400 and exc.value.code == "not_supported"
    assert "embeddings" in exc.value.message.lower()


def test_unknown_model_404(fleet) -> None:
    gw, _ = fleet
    with pytest.raises(openai.NotFoundError) as exc:
        client(gw).chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    assert exc.value.body["code"] == "model_not_found"  # type: ignore[index]


def test_context_overflow_is_400_and_not_retried(fleet) -> None:
    gw, _servers = fleet
    before = sum(b["served"] for b in gw.ready()["backends"])
    with pytest.raises(openai.BadRequestError) as exc:
        client(gw).chat.completions.create(model="youtu-vl", max_tokens=4,
                                           messages=[{"role": "user", "content": "word " * 3000}])
    # llama-server's exceed_context_size_error, in OpenAI's words (LangChain & co. branch on the code)
    body = exc.value.body
    assert isinstance(body, dict) and body["code"] == "context_length_exceeded", body
    assert body["type"] == "invalid_request_error" and body["param"] == "messages"
    assert body["n_prompt_tokens"] > body["n_ctx"] == 512
    assert exc.value.response.headers.get("x-should-retry") is None  # a 4xx: the SDK does not retry anyway
    assert sum(b["served"] for b in gw.ready()["backends"]) == before + 1


def test_langchain_invoke_stream_usage(fleet) -> None:
    from langchain_openai import ChatOpenAI

    gw, _ = fleet
    llm = ChatOpenAI(base_url=gw.url + "/v1", api_key="unused", model="youtu-vl", max_tokens=5,
                     stream_usage=True, max_retries=0)
    msg = llm.invoke("hi")
    assert isinstance(msg.content, str) and msg.usage_metadata is not None
    assert msg.usage_metadata["output_tokens"] == 5
    parts = list(llm.stream("hello"))
    assert len(parts) >= 2
    total = parts[0]
    for p in parts[1:]:
        total = total + p
    assert total.usage_metadata is not None and total.usage_metadata["output_tokens"] == 5


def test_client_disconnect_frees_the_slot(fleet) -> None:
    gw, servers = fleet
    body = {"model": "youtu-vl", "max_tokens": 700, "stream": True, "messages": [{"role": "user", "content": "go"}]}
    with httpx.Client(timeout=30) as h, h.stream("POST", gw.url + "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        next(r.iter_raw())
    # the client went away after the first bytes: the gateway must release its slot at once
    import time

    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and gw.ready()["in_flight"]:
        time.sleep(0.02)
    assert gw.ready()["in_flight"] == 0
    for s in servers:
        slots = httpx.get(s.url + "/slots").json()
        deadline = time.monotonic() + 5
        while any(x["is_processing"] for x in slots) and time.monotonic() < deadline:
            time.sleep(0.05)
            slots = httpx.get(s.url + "/slots").json()
        assert not any(x["is_processing"] for x in slots)


def test_backend_with_its_own_api_key(llama_server, tmp_path: Path) -> None:
    srv = llama_server(slots=1, ctx=512, extra_args=["--api-key", "backend-only-key"])
    assert httpx.post(srv.url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]},
                      timeout=10).status_code == 401  # the backend really wants its key
    gw = GatewayProcess({"backends": [{"url": srv.url, "api_key": "backend-only-key"}],
                         "gateway": {"api_keys": ["client-key"]}}, tmp_path).start()
    try:
        gw.wait_ready()
        c = openai.OpenAI(base_url=gw.url + "/v1", api_key="client-key", max_retries=0,
                          _strict_response_validation=True)
        r = c.chat.completions.create(model="youtu-vl", max_tokens=3, messages=[{"role": "user", "content": "hi"}])
        assert r.usage is not None and r.usage.completion_tokens == 3
        assert gw.ready()["backends"][0]["slots"] == 1  # /slots read with the backend's key
    finally:
        gw.stop()
