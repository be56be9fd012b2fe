"""/v1/responses through the gateway to a real llama-server: the openai SDK (strict), its helpers, LangChain,
presets, drop-in model names and the unprefixed alias."""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Iterator

import httpx
import openai
import pytest
from langchain_openai import ChatOpenAI
from PIL import Image

from support.gateway_process import GatewayProcess
from support.stack import llama_behind_gateway

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, llama_server_bin, tiny_model) -> Iterator[GatewayProcess]:
    with llama_behind_gateway(tmp_path_factory.mktemp("responses"), llama_server_bin, tiny_model, mmproj=True,
                              extra_args=["--jinja", "--alias", "tiny"]) as (gateway, _):
        yield gateway


def client(gw: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", _strict_response_validation=True, max_retries=0)


def png_data_url(size: tuple[int, int] = (64, 48)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def test_create_non_stream(gw) -> None:
    r = client(gw).responses.create(model="youtu-vl", input="hello there", max_output_tokens=6,
                                    instructions="Be brief.")
    # the random model always runs into max_output_tokens: OpenAI calls that incomplete (b11434 "completed")
    assert r.object == "response" and r.status == "incomplete"
    assert r.incomplete_details is not None and r.incomplete_details.reason == "max_output_tokens"
    assert r.output_text and r.output[0].type == "message"
    assert r.usage is not None and r.usage.output_tokens == 6
    assert r.usage.total_tokens == r.usage.input_tokens + 6
    assert r.tools == [] and r.tool_choice == "auto" and r.parallel_tool_calls is True
    assert r.instructions == "Be brief." and r.max_output_tokens == 6


def test_create_stream(gw) -> None:
    events = list(client(gw).responses.create(model="youtu-vl", input="count", max_output_tokens=5, stream=True))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[0].type == "response.created" and events[-1].type == "response.incomplete"
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas and events[-1].response.output_text == deltas
    assert events[-1].response.usage is not None and events[-1].response.usage.output_tokens == 5


def test_stream_helper(gw) -> None:
    """`responses.stream()` accepts every event; a cut-off answer ends in `response.incomplete`, as on OpenAI
    (a completed one, whose `get_final_response()` works: test_responses_structured.py)."""
    with client(gw).responses.stream(model="youtu-vl", input=[{"role": "user", "content": "hi"}],
                                     max_output_tokens=5) as stream:
        events = list(stream)
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert events[-1].type == "response.incomplete" and events[-1].response.output_text == text


def test_input_image_reaches_the_model(gw) -> None:
    plain = client(gw).responses.create(model="youtu-vl", max_output_tokens=2, input="describe")
    with_image = client(gw).responses.create(model="youtu-vl", max_output_tokens=2, input=[{"role": "user", "content": [
        {"type": "input_image", "image_url": png_data_url(), "detail": "auto"},
        {"type": "input_text", "text": "describe"}]}])
    assert with_image.usage is not None and plain.usage is not None
    assert with_image.usage.input_tokens > plain.usage.input_tokens  # the image's tokens were counted


def test_unknown_previous_response_id_is_openais_400(gw) -> None:
    """(stored responses and their chains: test_responses_stored.py)"""
    with pytest.raises(openai.BadRequestError) as exc:
        client(gw).responses.create(model="youtu-vl", input="and then?", previous_response_id="resp_1")
    assert exc.value.code == "previous_response_not_found" and "resp_1" in exc.value.message


def test_presets_on_responses(gw) -> None:
    r = client(gw).responses.create(model="youtu-vl", max_output_tokens=8, extra_body={"preset": "detect"},
                                    input=[{"role": "user", "content": [
                                        {"type": "input_image", "image_url": png_data_url((640, 480))}]}])
    ext = r.model_extra["vlgate"]
    assert ext["preset"] == "detect" and ext["image"]["width"] == 640 and "boxes" in ext
    events = list(client(gw).responses.create(model="youtu-vl:detect", max_output_tokens=8, stream=True, input=[
        {"role": "user", "content": [{"type": "input_image", "image_url": png_data_url((640, 480))}]}]))
    assert events[-1].type == "response.incomplete"  # 8 tokens cannot finish a detection
    assert events[-1].model_extra["vlgate"]["preset"] == "detect"
    assert "truncated" in events[-1].model_extra["vlgate"]["parse_errors"][-1]
    assert events[-1].response.model_extra["vlgate"]["image"]["height"] == 480
    # a preset that runs several model calls is the chat route's: a clear 400, not half a result
    with pytest.raises(openai.BadRequestError) as exc:
        client(gw).responses.create(model="youtu-vl", max_output_tokens=8,
                                    extra_body={"preset": {"name": "refer_segment", "expression": "the dog"}},
                                    input=[{"role": "user", "content": [
                                        {"type": "input_image", "image_url": png_data_url((64, 64))}]}])
    assert exc.value.body["code"] == "unsupported_preset"  # type: ignore[index]


def test_drop_in_model_names(gw) -> None:
    deadline = time.monotonic() + 10  # the gateway asks a backend for its ids once it is ready
    while "tiny" not in (ids := [m.id for m in client(gw).models.list()]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "youtu-vl" in ids and "tiny" in ids  # the gateway's name and the backend's --alias
    r = client(gw).responses.create(model="tiny", input="hi", max_output_tokens=2)
    assert r.usage is not None and r.usage.output_tokens == 2
    assert client(gw).chat.completions.create(model="tiny", max_tokens=2, messages=[
        {"role": "user", "content": "hi"}]).choices
    with pytest.raises(openai.NotFoundError) as exc:
        client(gw).responses.create(model="gpt-4o", input="hi", max_output_tokens=2)
    assert "'tiny'" in exc.value.message and "'youtu-vl'" in exc.value.message


def test_unprefixed_aliases(gw) -> None:
    r = httpx.post(gw.url + "/responses", json={"input": "hi", "max_output_tokens": 3}, timeout=30)
    assert r.status_code == 200 and r.json()["object"] == "response" and "parallel_tool_calls" in r.json()
    r = httpx.post(gw.url + "/chat/completions", timeout=30,
                   json={"max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200 and r.json()["object"] == "chat.completion"


def test_langchain_responses_api(gw) -> None:
    llm = ChatOpenAI(model="youtu-vl", base_url=gw.url + "/v1", api_key="unused", use_responses_api=True,
                     max_tokens=5, max_retries=0)
    msg = llm.invoke("hello")
    assert msg.text and msg.usage_metadata is not None and msg.usage_metadata["output_tokens"] == 5
    chunks = list(llm.stream("hello"))
    assert "".join(c.text for c in chunks)
