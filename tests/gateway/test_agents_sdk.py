"""The OpenAI Agents SDK keeps an agent's state on the gateway: a tool-calling agent (the tiny model calls the
tool when tools are in its prompt, and answers in text after the tool's result) run through a real
llama-server with `auto_previous_response_id=True` (each turn names the previous response) and with a
`conversation_id` (each turn sends only its new items), checked against what the gateway stored."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from agents import (
    Agent,
    ModelSettings,
    Runner,
    function_tool,
    set_default_openai_api,
    set_default_openai_client,
    set_tracing_disabled,
)
from openai import AsyncOpenAI

from support.statefulgw import KEY_A, StatefulStack, stateful_stack

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def st(tmp_path_factory: pytest.TempPathFactory, llama_server_bin, tiny_model) -> Iterator[StatefulStack]:
    with stateful_stack(tmp_path_factory.mktemp("agents"), llama_server_bin, tiny_model) as stack:
        yield stack


def weather_agent(calls: list[str]) -> Agent[Any]:
    @function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        calls.append(city)
        return f"Sunny in {city}."

    # tool_choice auto: the tiny model calls the tool first, then answers after its result
    return Agent(name="weather", instructions="Answer with the tool.", model="youtu-vl", tools=[get_weather],
                 model_settings=ModelSettings(max_tokens=60, temperature=0))


def run(st: StatefulStack, agent: Agent[Any], text: str, **kwargs: Any) -> Any:
    async def go() -> Any:
        client = AsyncOpenAI(base_url=st.gw.url + "/v1", api_key=KEY_A, max_retries=0,
                             _strict_response_validation=True)
        set_default_openai_client(client, use_for_tracing=False)
        set_default_openai_api("responses")
        set_tracing_disabled(True)
        try:
            return await Runner.run(agent, text, max_turns=4, **kwargs)
        finally:
            await client.close()

    return asyncio.run(go())


def test_auto_previous_response_id(st: StatefulStack) -> None:
    calls: list[str] = []
    result = run(st, weather_agent(calls), "What is the weather in Paris?", auto_previous_response_id=True)
    assert len(calls) == 1 and isinstance(calls[0], str)
    assert isinstance(result.final_output, str) and result.final_output
    first, last = result.raw_responses[0], result.raw_responses[-1]
    assert len(result.raw_responses) == 2 and last.response_id is not None and first.response_id is not None
    c = st.client()
    stored = c.responses.retrieve(last.response_id)
    assert stored.previous_response_id == first.response_id  # the SDK chained the turns on the gateway
    assert stored.output_text == result.final_output
    # the second turn sent only the tool's result; the call it answers came from the stored chain
    sent = c.responses.input_items.list(last.response_id).data
    assert [i.type for i in sent] == ["function_call_output"]
    assert [i.type for i in c.responses.retrieve(first.response_id).output] == ["function_call"]
    assert sent[0].type == "function_call_output" and "Sunny in" in str(sent[0].output)


def test_conversation_id(st: StatefulStack) -> None:
    c = st.client()
    conv = c.conversations.create(metadata={"agent": "weather"})
    calls: list[str] = []
    result = run(st, weather_agent(calls), "What is the weather in Oslo?", conversation_id=conv.id)
    assert len(calls) == 1 and isinstance(result.final_output, str) and result.final_output
    kinds = [i.type for i in c.conversations.items.list(conv.id, order="asc")]
    assert kinds == ["message", "function_call", "function_call_output", "message"]
    items = c.conversations.items.list(conv.id, order="asc").data
    assert items[0].type == "message" and items[0].role == "user"
    assert items[-1].type == "message" and items[-1].role == "assistant"
    # a second run in the same conversation starts from all of it
    again = run(st, weather_agent(calls), "And tomorrow?", conversation_id=conv.id)
    assert isinstance(again.final_output, str)
    assert len(c.conversations.items.list(conv.id).data) > len(kinds)
