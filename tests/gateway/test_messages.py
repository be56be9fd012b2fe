"""/v1/messages through the gateway to a real llama-server: the anthropic SDK unchanged (strict), `x-api-key`
auth, count_tokens, and LangChain's ChatAnthropic."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator

import anthropic
import httpx
import pytest
from langchain_anthropic import ChatAnthropic
from PIL import Image

from support.gateway_process import GatewayProcess
from support.stack import llama_behind_gateway

pytestmark = pytest.mark.slow
KEY = "sk-test-messages"


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, llama_server_bin, tiny_model) -> Iterator[GatewayProcess]:
    with llama_behind_gateway(tmp_path_factory.mktemp("messages"), llama_server_bin, tiny_model, mmproj=True,
                              gateway={"api_keys": [KEY]}) as (gateway, _):
        yield gateway


def client(gw: GatewayProcess, key: str = KEY) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key=key, _strict_response_validation=True, max_retries=0)


def b64png(size: tuple[int, int] = (64, 48)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_create(gw) -> None:
    m = client(gw).messages.create(model="youtu-vl", max_tokens=6, system="Be brief.",
                                   messages=[{"role": "user", "content": "hello"}])
    assert m.type == "message" and m.role == "assistant" and m.stop_reason == "max_tokens"
    assert m.content[0].type == "text" and m.content[0].text
    assert m.usage.output_tokens == 6


def test_stream_helper(gw) -> None:
    with client(gw).messages.stream(model="youtu-vl", max_tokens=5,
                                    messages=[{"role": "user", "content": "hello"}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text and final.content[0].type == "text" and final.content[0].text == text
    assert final.usage.output_tokens == 5 and final.stop_reason == "max_tokens"


def test_image_block_reaches_the_model(gw) -> None:
    plain = client(gw).messages.count_tokens(model="youtu-vl", messages=[{"role": "user", "content": "what?"}])
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": b64png()}}
    counted = client(gw).messages.count_tokens(model="youtu-vl", messages=[
        {"role": "user", "content": [image, {"type": "text", "text": "what?"}]}])
    assert counted.input_tokens > plain.input_tokens > 0
    m = client(gw).messages.create(model="youtu-vl", max_tokens=2, messages=[
        {"role": "user", "content": [image, {"type": "text", "text": "what?"}]}])
    assert m.usage.output_tokens == 2


def test_keys(gw) -> None:
    with pytest.raises(anthropic.AuthenticationError) as exc:
        client(gw, "wrong").messages.create(model="youtu-vl", max_tokens=2, messages=[{"role": "user", "content": "x"}])
    assert exc.value.body["type"] == "error" and exc.value.body["error"]["type"] == "authentication_error"
    r = httpx.post(gw.url + "/v1/messages", json={"model": "youtu-vl", "max_tokens": 2,
                                                  "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    r = httpx.post(gw.url + "/v1/messages", headers={"Authorization": f"Bearer {KEY}"}, timeout=30,
                   json={"model": "youtu-vl", "max_tokens": 2, "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 200
    assert next(m.id for m in client(gw).models.list()) == "youtu-vl"  # x-api-key on the GET routes too


def test_langchain_chat_anthropic(gw) -> None:
    llm = ChatAnthropic(model="youtu-vl", base_url=gw.url, api_key=KEY, max_tokens=5, max_retries=0)
    msg = llm.invoke("hello")
    assert msg.text and msg.usage_metadata is not None and msg.usage_metadata["output_tokens"] == 5
    assert "".join(c.text for c in llm.stream("hello"))
