"""Large request bodies parse exactly as orjson parses them: same values, same errors, through the gateway too."""

from __future__ import annotations

import base64
import io
import json
import random
from collections.abc import Iterator

import anthropic
import httpx
import numpy as np
import openai
import orjson
import pytest
from PIL import Image

from support.gateway_process import GatewayProcess
from support.stack import llama_behind_gateway
from vlgate.gateway.endpoint import bodyjson

B64 = base64.b64encode(random.Random(7).randbytes(300_000)).decode()  # 400 KB: above both thresholds
URL = "data:image/jpeg;base64," + B64

CASES = {
    "one image": orjson.dumps(
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": URL}}]}]}),
    "three images and a short data URL": orjson.dumps([{"u": URL}, "data:,x", {"u": URL, "v": [URL]}]),
    "escaped slashes (PHP style)": orjson.dumps({"u": URL}).replace(b"/", b"\\/"),
    "escape inside": orjson.dumps({"u": URL[:1000] + "\\u0041" + URL[1000:]}),
    "data URL as a key": orjson.dumps({URL: 1, "v": URL}),
    "quoted inside a longer string": orjson.dumps({"t": '"' + URL + '"', "u": URL}),
    "after an escaped quote": orjson.dumps({"t": 'say "' + URL, "u": URL}),  # cut, not found back: orjson
    "non-ASCII inside": orjson.dumps({"u": URL + "é"}),
    "deep nesting": b"[" * 1000 + b'"' + URL.encode() + b'"' + b"]" * 1000,
    "many short data URLs first": orjson.dumps(["data:x"] * 100 + [URL]),
    "truncated": orjson.dumps({"u": URL})[:-2],
    "unterminated string": b'{"u": "' + URL.encode(),
    "trailing garbage": orjson.dumps({"u": URL}) + b"x",
    "control character": b'{"u": "' + URL.encode() + b'\x01"}',
    "invalid UTF-8": b'{"u": "' + URL.encode() + b'\xff"}',
    "string then data:": b'{"a": "x""' + URL.encode() + b'"}',
    "small body": b'{"u": "data:,abc"}',
    "Anthropic source, Python json spacing": json.dumps({"messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": B64}}]}]}).encode(),
    "Anthropic source, pretty-printed": json.dumps({"source": {"data": B64}, "data": 5}, indent=2).encode(),
    "data as a value, then a data key": orjson.dumps(["data", {"data": None}, {"data": B64}, "data"]),
    "data key inside a string value": orjson.dumps({"t": 'x"data": "', "u": B64}),
    "data key after a string value": b'{"x":"data": "' + B64.encode() + b'"}',
    "bare data before a string": b'{"x": data": "' + B64.encode() + b'"}',
}


def parsed(parse, raw: bytes) -> tuple[str, object]:
    try:
        return "ok", parse(raw)
    except orjson.JSONDecodeError as exc:
        return "error", str(exc)


@pytest.mark.parametrize("name", CASES)
def test_same_result_and_error_as_orjson(name: str) -> None:
    raw = CASES[name]
    assert unwrapped(parsed(bodyjson.loads, raw)) == unwrapped(parsed(orjson.loads, raw))


def unwrapped(result: tuple[str, object]) -> tuple[str, object, int]:
    """Single-element lists peeled off without recursion (== on 1000 levels would overflow the stack)."""
    kind, value = result
    depth = 0
    while isinstance(value, list) and len(value) == 1:
        value, depth = value[0], depth + 1
    return kind, value, depth


@pytest.mark.parametrize("name", ["three images and a short data URL", "Anthropic source, Python json spacing"])
def test_image_strings_are_cut_out_of_the_parse(name: str) -> None:
    """The cheap path is taken for the usual bodies (else this module would only add work)."""
    pieces, spans = bodyjson._cut(CASES[name])
    assert len(spans) == CASES[name].count(B64.encode()) and sum(map(len, pieces)) < 1000


# ---------------------------------------------------------------- through the gateway, real llama-server

def photo_jpeg() -> bytes:
    """A noisy 2400x1800 JPEG: several MB, like a phone photo."""
    pixels = np.random.default_rng(3).integers(0, 256, (1800, 2400, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=95)
    return buf.getvalue()


@pytest.fixture(scope="module")
def gateway(llama_server_bin, tiny_model, tmp_path_factory) -> Iterator[GatewayProcess]:
    with llama_behind_gateway(tmp_path_factory.mktemp("bodyjson"), llama_server_bin, tiny_model, mmproj=True,
                              slots=1, ctx=1024, extra_args=()) as (gw, _):
        yield gw


@pytest.mark.slow
def test_multi_mb_image_request_answers_the_same_either_way(gateway: GatewayProcess) -> None:
    """The cut-out path (plain base64) and orjson's own path (JSON-escaped slashes) reach llama-server with the
    same image: the same prompt and the same greedy answer."""
    url = "data:image/jpeg;base64," + base64.b64encode(photo_jpeg()).decode()
    assert len(url) > 3_000_000
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                             {"type": "text", "text": "What is in the picture?"}]}]
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", _strict_response_validation=True,
                           max_retries=0)
    answer = client.chat.completions.create(model="youtu-vl", messages=messages, max_tokens=4, temperature=0)
    assert answer.usage is not None and answer.usage.completion_tokens == 4
    escaped = orjson.dumps({"model": "youtu-vl", "messages": messages, "max_tokens": 4, "temperature": 0})
    escaped = escaped.replace(b"/", b"\\/")
    assert bodyjson._cut(escaped)[1] == []  # this body takes the plain orjson path
    r = httpx.post(gateway.url + "/v1/chat/completions", content=escaped, timeout=60,
                   headers={"Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == 4
    assert r.json()["usage"]["prompt_tokens"] == answer.usage.prompt_tokens
    assert r.json()["choices"][0]["message"]["content"] == answer.choices[0].message.content


@pytest.mark.slow
@pytest.mark.parametrize("cut", [slice(None, -2), slice(None, -30_000)], ids=["no closing", "mid image"])
def test_invalid_multi_mb_body_is_the_same_400(gateway: GatewayProcess, cut: slice) -> None:
    url = "data:image/jpeg;base64," + B64 * 8
    raw = orjson.dumps({"model": "youtu-vl", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}}]}]})[cut]
    expected = parsed(orjson.loads, raw)
    assert expected[0] == "error"
    r = httpx.post(gateway.url + "/v1/chat/completions", content=raw, timeout=60,
                   headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    assert r.json() == {"error": {"message": f"The request body is not valid JSON: {expected[1]}.",
                                  "type": "invalid_request_error", "param": None, "code": "invalid_json"}}


@pytest.mark.slow
def test_multi_mb_anthropic_image(gateway: GatewayProcess) -> None:
    """Anthropic's base64 source (a bare `data` string, not a data: URL) takes the cut-out path too."""
    data = base64.b64encode(photo_jpeg()).decode()
    client = anthropic.Anthropic(base_url=gateway.url, api_key="unused", _strict_response_validation=True,
                                 max_retries=0)
    answer = client.messages.create(model="youtu-vl", max_tokens=3, messages=[{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": data}},
        {"type": "text", "text": "What is in the picture?"}]}])
    assert answer.usage.output_tokens == 3 and answer.stop_reason == "max_tokens"


def test_too_many_objects_are_refused_before_parsing() -> None:
    flat = b'{"messages": [' + b",".join([b"{}"] * 1000) + b"]}"
    assert len(bodyjson.loads(flat, 1002)["messages"]) == 1000  # 1000 objects, the body, one array
    with pytest.raises(bodyjson.TooManyContainers):
        bodyjson.loads(flat, 1001)
    # braces inside a cut-out data: URL do not count (base64 has none; the cut text is not scanned)
    url = "data:image/png;base64," + "A" * 300_000 + "{[" * 1000
    body = orjson.dumps({"messages": [{"content": [{"image_url": {"url": url}}]}]})
    assert bodyjson.loads(body, 8)["messages"][0]["content"][0]["image_url"]["url"] == url
