"""Token counting and llama-server's utility routes through the gateway: the backend's own answers, images
normalized first, and a route no backend supports is a 4xx."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from PIL import Image

from support.stack import llama_behind_gateway

pytestmark = pytest.mark.slow

TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}}}}]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, llama_server_bin, tiny_model) -> Iterator[tuple[str, str]]:
    with llama_behind_gateway(tmp_path_factory.mktemp("tokens"), llama_server_bin, tiny_model, mmproj=True,
                              slots=1) as (gw, server):
        yield gw.url, server.url


def both(fleet: tuple[str, str], path: str, body: dict[str, Any]) -> tuple[Any, Any]:
    ours, theirs = (httpx.post(base + path, json=body, timeout=30) for base in fleet)
    assert ours.status_code == theirs.status_code == 200, (ours.text, theirs.text)
    return ours.json(), theirs.json()


@pytest.mark.parametrize("path, body", [
    ("/v1/chat/completions/input_tokens", {"messages": [{"role": "user", "content": "hello there"}], "tools": TOOLS}),
    ("/v1/responses/input_tokens", {"input": "hello there", "instructions": "Be brief.",
                                    "tools": [{"type": "function", **TOOLS[0]["function"]}]}),
    ("/v1/messages/count_tokens", {"model": "youtu-vl", "system": "Be brief.",
                                   "messages": [{"role": "user", "content": "hello there"}]}),
    ("/tokenize", {"content": "hello <|im_start|> there", "with_pieces": True}),
    ("/detokenize", {"tokens": [1, 2, 3, 40, 41]}),
    ("/apply-template", {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]}),
])
def test_answers_equal_the_backends(fleet, path: str, body: dict[str, Any]) -> None:
    ours, theirs = both(fleet, path, body)
    assert ours == theirs


def test_openai_sdk_counts_responses_input_tokens(fleet) -> None:
    client = openai.OpenAI(base_url=fleet[0] + "/v1", api_key="x", _strict_response_validation=True, max_retries=0)
    counted = client.responses.input_tokens.count(model="youtu-vl", input="hello there")
    _, theirs = both(fleet, "/v1/responses/input_tokens", {"input": "hello there"})
    assert counted.input_tokens == theirs["input_tokens"] > 0


def test_an_image_counts_the_same_in_every_shape(fleet) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (300, 200), (1, 2, 3)).save(buf, "PNG")
    b64 = base64.b64encode(buf.getvalue()).decode()
    url = "data:image/png;base64," + b64
    gw = fleet[0]
    chat = httpx.post(gw + "/v1/chat/completions/input_tokens", timeout=30, json={"messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                     {"type": "text", "text": "x"}]}]})
    responses = httpx.post(gw + "/v1/responses/input_tokens", timeout=30, json={"input": [
        {"role": "user", "content": [{"type": "input_image", "image_url": url}, {"type": "input_text", "text": "x"}]}]})
    messages = httpx.post(gw + "/v1/messages/count_tokens", timeout=30, json={"model": "youtu-vl", "messages": [
        {"role": "user", "content": [{"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                                  "data": b64}}, {"type": "text", "text": "x"}]}]})
    text_only = httpx.post(gw + "/v1/chat/completions/input_tokens", timeout=30,
                           json={"messages": [{"role": "user", "content": "x"}]})
    counts = {r.json()["input_tokens"] for r in (chat, responses, messages)}
    assert len(counts) == 1 and counts.pop() > text_only.json()["input_tokens"]


def test_token_routes_validate(fleet) -> None:
    r = httpx.post(fleet[0] + "/detokenize", json={"tokens": ["a"]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "tokens[0]"
    r = httpx.post(fleet[0] + "/tokenize", json={})
    assert r.status_code == 400 and r.json()["error"]["param"] == "content"


def test_routes_no_backend_supports_are_4xx(fleet) -> None:
    r = httpx.post(fleet[0] + "/v1/embeddings", json={"input": "hello"})  # no --embeddings
    assert r.status_code == 400 and "--embeddings" in r.json()["error"]["message"]
    for path in ("/v1/chat/completions/control", "/v1/audio/transcriptions", "/v1/rerank", "/infill", "/completion"):
        r = httpx.post(fleet[0] + path, json={})
        assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_url", path
