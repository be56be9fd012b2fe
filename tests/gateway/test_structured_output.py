"""Structured output and tool calls on chat, end to end: a real tiny llama-server (`--jinja`) behind the
real gateway, the openai SDK with strict validation and LangChain. Each case runs over several seeds and
temperatures: the tiny model (vlgate/tinymodel/) is random, so one lucky answer would prove little.
Answers are checked against the JSON schema they were asked for (`jsonschema`), not just parsed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, Literal

import jsonschema
import openai
import pytest
from pydantic import BaseModel

from support.gateway_process import GatewayProcess
from support.llama import LlamaServer

pytestmark = pytest.mark.slow

SAMPLING = [(seed, temperature) for seed in range(4) for temperature in (0.0, 0.8, 1.5)]

PERSON = {  # nesting, arrays, enums, numbers, booleans, nullable: every grammar rule the model must close
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "score": {"type": "number"},
        "ok": {"type": "boolean"},
        "kind": {"type": "string", "enum": ["cat", "dog", "bird"]},
        "tags": {"type": "array", "items": {"type": "string"}},
        "owner": {"type": "object", "properties": {"email": {"type": "string"}, "id": {"type": "integer"}},
                  "required": ["email", "id"], "additionalProperties": False},
        "note": {"type": ["string", "null"]},
    },
    "required": ["name", "age", "score", "ok", "kind", "tags", "owner", "note"],
    "additionalProperties": False,
}
WEATHER = {"type": "object", "properties": {"city": {"type": "string"},
                                            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
           "required": ["city"], "additionalProperties": False}
SEARCH = {"type": "object", "properties": {"query": {"type": "string"}, "limit": {"type": "integer"},
                                           "filters": {"type": "array", "items": {"type": "string"}}},
          "required": ["query", "limit"], "additionalProperties": False}
PARAMS = {"get_weather": WEATHER, "search": SEARCH}
TOOLS = [{"type": "function", "function": {"name": name, "description": f"{name} tool", "parameters": schema}}
         for name, schema in PARAMS.items()]


class Pet(BaseModel):
    name: str
    age: int
    kind: Literal["cat", "dog"]
    tags: list[str]


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, llama_server_bin, tiny_model) -> Iterator[GatewayProcess]:
    tmp = tmp_path_factory.mktemp("structured-chat")
    server = LlamaServer(llama_server_bin, tiny_model.model, slots=2, ctx=4096, extra_args=["--jinja"],
                         log_dir=tmp / "llama").start()
    gateway = GatewayProcess({"backends": [{"url": server.url}]}, tmp).start()
    gateway.wait_ready()
    yield gateway
    gateway.stop()
    server.stop()


def oai(gw: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="x", _strict_response_validation=True, max_retries=0)


def check_calls(calls: list[Any] | None) -> None:
    """Every call names a given tool and its arguments are JSON matching that tool's parameters."""
    assert calls, "no tool call"
    for call in calls:
        jsonschema.validate(json.loads(call.function.arguments), PARAMS[call.function.name])


def test_json_schema_answers_validate(gw) -> None:
    client = oai(gw)
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    for seed, temperature in SAMPLING:
        r = client.chat.completions.create(model="youtu-vl", messages=[{"role": "user", "content": "A person."}],
                                           response_format=fmt, seed=seed, temperature=temperature, max_tokens=300)
        assert r.choices[0].finish_reason == "stop", (seed, temperature, r.choices[0].message.content)
        jsonschema.validate(json.loads(r.choices[0].message.content or ""), PERSON)


def test_json_object_and_parse_helper(gw) -> None:
    client = oai(gw)
    for seed, temperature in SAMPLING[::2]:
        r = client.chat.completions.create(model="youtu-vl", messages=[{"role": "user", "content": "JSON."}],
                                           response_format={"type": "json_object"}, seed=seed,
                                           temperature=temperature, max_tokens=300)
        assert r.choices[0].finish_reason == "stop"
        assert isinstance(json.loads(r.choices[0].message.content or ""), dict)
        parsed = client.chat.completions.parse(model="youtu-vl", messages=[{"role": "user", "content": "A pet."}],
                                               response_format=Pet, seed=seed, temperature=temperature)
        assert isinstance(parsed.choices[0].message.parsed, Pet)


@pytest.mark.parametrize("tool_choice", ["required", "auto"])
def test_tool_calls_are_well_formed(gw, tool_choice: str) -> None:
    client = oai(gw)
    for seed, temperature in SAMPLING:
        r = client.chat.completions.create(model="youtu-vl", messages=[{"role": "user", "content": "Weather?"}],
                                           tools=TOOLS, tool_choice=tool_choice, seed=seed,
                                           temperature=temperature, max_tokens=300)
        assert r.choices[0].finish_reason == "tool_calls", (seed, temperature, r.choices[0].message)
        check_calls(r.choices[0].message.tool_calls)


def test_a_named_tool_choice_holds(gw) -> None:
    """b11434 reads only string tool_choice (a named one acts as "auto"): the gateway pins the named tool."""
    client = oai(gw)
    for name in PARAMS:
        for seed, temperature in SAMPLING[::3]:
            r = client.chat.completions.create(
                model="youtu-vl", messages=[{"role": "user", "content": "Weather?"}], tools=TOOLS,
                tool_choice={"type": "function", "function": {"name": name}}, seed=seed, temperature=temperature,
                max_tokens=300)
            calls = r.choices[0].message.tool_calls
            check_calls(calls)
            assert calls and {c.function.name for c in calls} == {name}
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="youtu-vl", messages=[{"role": "user", "content": "x"}], tools=TOOLS,
                                       tool_choice={"type": "function", "function": {"name": "nope"}})
    assert exc.value.body["param"] == "tool_choice"  # type: ignore[index]


def test_streamed_tool_call_assembles(gw) -> None:
    for seed in range(3):
        chunks = list(oai(gw).chat.completions.create(
            model="youtu-vl", messages=[{"role": "user", "content": "Weather?"}], tools=TOOLS,
            tool_choice="auto", seed=seed, temperature=0.8, max_tokens=300, stream=True))
        name, args = "", ""
        for chunk in chunks:
            for delta in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
                assert delta.index == 0  # one call per answer
                name += (delta.function and delta.function.name) or ""
                args += (delta.function and delta.function.arguments) or ""
        assert chunks[-1].choices[0].finish_reason == "tool_calls"
        jsonschema.validate(json.loads(args), PARAMS[name])


def test_tool_round_trip_then_text(gw) -> None:
    """After a tool result the model answers in text: an agent loop ends."""
    client = oai(gw)
    first = client.chat.completions.create(model="youtu-vl", messages=[{"role": "user", "content": "Weather?"}],
                                           tools=TOOLS, seed=1, max_tokens=300)
    call = first.choices[0].message.tool_calls[0]  # type: ignore[index]
    messages: list[Any] = [{"role": "user", "content": "Weather?"}, first.choices[0].message.model_dump(),
                           {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"}]
    second = client.chat.completions.create(model="youtu-vl", messages=messages, tools=TOOLS, seed=1, max_tokens=50)
    assert second.choices[0].message.tool_calls is None
    assert second.choices[0].message.content


def test_langchain_structured_output_and_tools(gw) -> None:
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    @tool
    def get_weather(city: str, unit: Literal["celsius", "fahrenheit"] = "celsius") -> str:
        """Current weather in a city."""
        return "sunny"

    for seed, temperature in SAMPLING[::3]:
        llm = ChatOpenAI(base_url=gw.url + "/v1", api_key="x", model="youtu-vl", max_retries=0, seed=seed,
                         temperature=temperature, max_tokens=300)
        for method in ("json_schema", "function_calling"):
            assert isinstance(llm.with_structured_output(Pet, method=method).invoke("A pet."), Pet)
        for choice in (None, "any"):
            msg = llm.bind_tools([get_weather], tool_choice=choice).invoke("Weather in Paris?")
            assert [c["name"] for c in msg.tool_calls] == ["get_weather"]
            assert isinstance(msg.tool_calls[0]["args"]["city"], str)
            assert msg.tool_calls[0]["args"].get("unit", "celsius") in ("celsius", "fahrenheit")
