"""Grammar-constrained output on the new routes, end to end with a real llama-server: Responses `text.format`
(via `responses.parse()`, also streamed) and tools, Anthropic `tool_use`. Needs the tiny model's byte-level
BPE vocabulary (vlgate/tinymodel/): a random model then produces schema-valid JSON under the grammar."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest
from pydantic import BaseModel

from support.gateway_process import GatewayProcess
from support.stack import llama_behind_gateway

pytestmark = pytest.mark.slow


class City(BaseModel):
    name: str
    population: int


WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, llama_server_bin, tiny_model) -> Iterator[GatewayProcess]:
    with llama_behind_gateway(tmp_path_factory.mktemp("structured"), llama_server_bin, tiny_model) as (gateway, _):
        yield gateway


def oai(gw: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="x", _strict_response_validation=True, max_retries=0)


def test_responses_parse_honours_text_format(gw) -> None:
    r = oai(gw).responses.parse(model="youtu-vl", input="A city, as JSON.", text_format=City, max_output_tokens=200)
    assert isinstance(r.output_parsed, City)
    assert r.text.format.type == "json_schema"


def test_responses_stream_with_text_format(gw) -> None:
    with oai(gw).responses.stream(model="youtu-vl", input="A city, as JSON.", text_format=City,
                                  max_output_tokens=200) as stream:
        for _ in stream:
            pass
        final = stream.get_final_response()
    assert isinstance(final.output_parsed, City)


def test_responses_required_tool_call(gw) -> None:
    tools = [{"type": "function", "name": "get_weather", "parameters": WEATHER, "strict": True}]
    for stream in (False, True):
        if stream:
            with oai(gw).responses.stream(model="youtu-vl", input="Weather in Paris?", tools=tools,
                                          tool_choice="required", max_output_tokens=200) as s:
                kinds = [e.type for e in s]
                r = s.get_final_response()
            assert "response.function_call_arguments.done" in kinds
        else:
            r = oai(gw).responses.create(model="youtu-vl", input="Weather in Paris?", tools=tools,
                                         tool_choice="required", max_output_tokens=200)
        calls = [item for item in r.output if item.type == "function_call"]
        assert calls and calls[0].name == "get_weather"
        assert isinstance(json.loads(calls[0].arguments)["city"], str)


def test_anthropic_tool_use(gw) -> None:
    client = anthropic.Anthropic(base_url=gw.url, api_key="x", _strict_response_validation=True, max_retries=0)
    kwargs: dict[str, Any] = {"model": "youtu-vl", "max_tokens": 200, "tool_choice": {"type": "any"},
                              "tools": [{"name": "get_weather", "description": "weather", "input_schema": WEATHER}],
                              "messages": [{"role": "user", "content": "Weather in Paris?"}]}
    m = client.messages.create(**kwargs)
    uses = [b for b in m.content if b.type == "tool_use"]
    assert m.stop_reason == "tool_use" and uses and uses[0].name == "get_weather"
    assert isinstance(uses[0].input["city"], str)
    with client.messages.stream(**kwargs) as s:
        final = s.get_final_message()
    uses = [b for b in final.content if b.type == "tool_use"]
    assert uses and isinstance(uses[0].input["city"], str)


SEARCH = {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}


def test_a_named_tool_choice_is_the_tool_called(gw) -> None:
    """b11434 reads an object tool_choice as "auto" (Responses) or "any tool" (Anthropic): the gateway pins it."""
    tools = [{"type": "function", "name": "get_weather", "parameters": WEATHER},
             {"type": "function", "name": "search", "parameters": SEARCH}]
    r = oai(gw).responses.create(model="youtu-vl", input="Find cats.", tools=tools, max_output_tokens=200,
                                 tool_choice={"type": "function", "name": "search"})
    calls = [item for item in r.output if item.type == "function_call"]
    assert [c.name for c in calls][:1] == ["search"] and isinstance(json.loads(calls[0].arguments)["query"], str)
    assert [t.name for t in r.tools] == ["get_weather", "search"]  # the response echoes what the client sent
    client = anthropic.Anthropic(base_url=gw.url, api_key="x", _strict_response_validation=True, max_retries=0)
    m = client.messages.create(model="youtu-vl", max_tokens=200, tool_choice={"type": "tool", "name": "search"},
                               tools=[{"name": "get_weather", "input_schema": WEATHER},
                                      {"name": "search", "input_schema": SEARCH}],
                               messages=[{"role": "user", "content": "Find cats."}])
    assert [b.name for b in m.content if b.type == "tool_use"][:1] == ["search"]
    m = client.messages.create(model="youtu-vl", max_tokens=20, tool_choice={"type": "none"},
                               tools=[{"name": "search", "input_schema": SEARCH}],
                               messages=[{"role": "user", "content": "Find cats."}])
    assert not [b for b in m.content if b.type == "tool_use"]
