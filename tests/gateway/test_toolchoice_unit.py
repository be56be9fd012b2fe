"""A named tool_choice narrowed to that tool (llama-server b11434 reads tool_choice only as a string), in each
API's form: chat's `{"type": "function", "function": {"name"}}`, Responses' `{"type": "function", "name"}` and
`allowed_tools`, Anthropic's `{"type": "tool", "name"}` and `{"type": "none"}`."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from vlgate.errors import APIError
from vlgate.gateway.apis.toolchoice import anthropic_tool_choice, pin_named_tool, responses_tool_choice

Rewrite = Callable[[dict[str, Any]], bool]


def chat_tool(name: str) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "parameters": {"type": "object", "properties": {}}}}


def flat_tool(name: str) -> dict[str, Any]:
    return {"type": "function", "name": name, "parameters": {"type": "object", "properties": {}}}


def anthropic_tool(name: str) -> dict[str, Any]:
    return {"name": name, "input_schema": {"type": "object", "properties": {}}}


CHAT_TOOLS = [chat_tool("get_weather"), chat_tool("get_time"), chat_tool("get_weather")]
FLAT_TOOLS = [flat_tool("get_weather"), flat_tool("get_time"), {"type": "web_search"}]
ANTHROPIC_TOOLS = [anthropic_tool("get_weather"), anthropic_tool("get_time")]


def rejected(rewrite: Rewrite, body: dict[str, Any]) -> APIError:
    """The 400 a rewrite raises; the body is left as it was."""
    before = copy.deepcopy(body)
    with pytest.raises(APIError) as info:
        rewrite(body)
    assert body == before
    exc = info.value
    assert (exc.status, exc.param, exc.code, exc.type) == (400, "tool_choice", "invalid_value", "invalid_request_error")
    return exc


def unchanged(rewrite: Rewrite, body: dict[str, Any]) -> None:
    before = copy.deepcopy(body)
    assert rewrite(body) is False
    assert body == before


# ---------------------------------------------------------------- chat completions

@pytest.mark.parametrize("choice", ["none", "auto", "required", None, 5, ["x"]])
def test_chat_string_choices_are_left_alone(choice: Any) -> None:
    body: dict[str, Any] = {"tools": copy.deepcopy(CHAT_TOOLS), "tool_choice": choice}
    unchanged(pin_named_tool, body)
    unchanged(pin_named_tool, {"messages": []})  # no tool_choice at all


def test_chat_named_function_is_pinned() -> None:
    body: dict[str, Any] = {"model": "m", "tools": copy.deepcopy(CHAT_TOOLS),
                            "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}
    assert pin_named_tool(body) is True
    assert body == {"model": "m", "tools": [CHAT_TOOLS[0], CHAT_TOOLS[2]], "tool_choice": "required"}
    unchanged(pin_named_tool, body)  # idempotent: a second pass has nothing to do


def test_chat_non_dict_tools_are_dropped() -> None:
    body: dict[str, Any] = {"tools": ["junk", chat_tool("a"), {"type": "function"}, chat_tool("b")],
                            "tool_choice": {"type": "function", "function": {"name": "b"}}}
    assert pin_named_tool(body) is True and body["tools"] == [chat_tool("b")]


@pytest.mark.parametrize("tools", [CHAT_TOOLS, None, [], FLAT_TOOLS])  # FLAT_TOOLS: Responses' form, not chat's
def test_chat_unknown_tool_name_is_a_400(tools: list[dict[str, Any]] | None) -> None:
    body: dict[str, Any] = {"tool_choice": {"type": "function", "function": {"name": "get_stock"}}}
    if tools is not None:
        body["tools"] = copy.deepcopy(tools)
    exc = rejected(pin_named_tool, body)
    assert exc.message == "tool_choice names the function 'get_stock', which is not in tools."


@pytest.mark.parametrize("choice", [
    {"type": "function", "name": "get_weather"},  # Responses' form on chat
    {"type": "function", "function": {}},
    {"type": "function", "function": "get_weather"},
    {"type": "function", "function": {"name": 3}},
    {"type": "tool", "function": {"name": "get_weather"}},
    {"function": {"name": "get_weather"}},
    {},
])
def test_chat_malformed_object_choice_is_a_400(choice: dict[str, Any]) -> None:
    exc = rejected(pin_named_tool, {"tools": copy.deepcopy(CHAT_TOOLS), "tool_choice": choice})
    assert exc.message.startswith('tool_choice must be "none", "auto", "required" or {"type": "function"')


# ---------------------------------------------------------------- Responses

@pytest.mark.parametrize("choice", ["none", "auto", "required", None])
def test_responses_string_choices_are_left_alone(choice: Any) -> None:
    unchanged(responses_tool_choice, {"tools": copy.deepcopy(FLAT_TOOLS), "tool_choice": choice})
    unchanged(responses_tool_choice, {"input": "x"})


def test_responses_named_function_is_pinned() -> None:
    body: dict[str, Any] = {"input": "x", "tools": copy.deepcopy(FLAT_TOOLS),
                            "tool_choice": {"type": "function", "name": "get_time"}}
    assert responses_tool_choice(body) is True
    assert body == {"input": "x", "tools": [FLAT_TOOLS[1]], "tool_choice": "required"}
    unchanged(responses_tool_choice, body)


@pytest.mark.parametrize("mode", ["auto", "required"])
def test_responses_allowed_tools_narrow_to_the_set_and_keep_the_mode(mode: str) -> None:
    choice = {"type": "allowed_tools", "mode": mode,
              "tools": [{"type": "function", "name": "get_time"}, {"type": "function", "name": "get_weather"},
                        {"type": "function", "name": "not_offered"}, "junk"]}
    body: dict[str, Any] = {"tools": copy.deepcopy(FLAT_TOOLS), "tool_choice": choice}
    assert responses_tool_choice(body) is True
    assert body == {"tools": FLAT_TOOLS[:2], "tool_choice": mode}  # the request's order, not the choice's
    unchanged(responses_tool_choice, body)


@pytest.mark.parametrize("tools", [FLAT_TOOLS, None, [], CHAT_TOOLS])  # CHAT_TOOLS: no top-level name
def test_responses_unknown_tool_name_is_a_400(tools: list[dict[str, Any]] | None) -> None:
    body: dict[str, Any] = {"tool_choice": {"type": "function", "name": "get_weather"}}
    if tools is not None:
        body["tools"] = copy.deepcopy(tools)
    if tools is FLAT_TOOLS:
        body["tool_choice"]["name"] = "get_stock"
    exc = rejected(responses_tool_choice, body)
    assert "which is not in tools" in exc.message


def test_responses_allowed_tools_none_offered_names_them_all() -> None:
    choice = {"type": "allowed_tools", "mode": "auto",
              "tools": [{"type": "function", "name": "b"}, {"type": "function", "name": "a"}]}
    exc = rejected(responses_tool_choice, {"tools": copy.deepcopy(FLAT_TOOLS[:2]), "tool_choice": choice})
    assert exc.message == "tool_choice names the function 'a', 'b', which is not in tools."


@pytest.mark.parametrize("choice", [
    {"type": "allowed_tools", "mode": "none", "tools": [{"type": "function", "name": "get_time"}]},
    {"type": "allowed_tools", "tools": [{"type": "function", "name": "get_time"}]},
    {"type": "function"},
    {"type": "function", "function": {"name": "get_time"}},  # chat's form on Responses
    {"type": "file_search"},
    {"type": "mcp", "server_label": "deepwiki"},
    {"type": "custom", "name": "get_time"},
    {},
])
def test_responses_unsupported_object_choice_is_a_400(choice: dict[str, Any]) -> None:
    exc = rejected(responses_tool_choice, {"tools": copy.deepcopy(FLAT_TOOLS), "tool_choice": choice})
    assert exc.message.startswith(f"tool_choice of type {choice.get('type')!r} is not supported here")


# ---------------------------------------------------------------- Anthropic

@pytest.mark.parametrize("choice", [{"type": "auto"}, {"type": "any"}, "auto", None,
                                    {"type": "auto", "disable_parallel_tool_use": True}])
def test_anthropic_auto_and_any_are_left_alone(choice: Any) -> None:
    unchanged(anthropic_tool_choice, {"tools": copy.deepcopy(ANTHROPIC_TOOLS), "tool_choice": choice})
    unchanged(anthropic_tool_choice, {"messages": []})


def test_anthropic_named_tool_is_pinned_as_any() -> None:
    body: dict[str, Any] = {"max_tokens": 5, "tools": copy.deepcopy(ANTHROPIC_TOOLS),
                            "tool_choice": {"type": "tool", "name": "get_time"}}
    assert anthropic_tool_choice(body) is True
    assert body == {"max_tokens": 5, "tools": [ANTHROPIC_TOOLS[1]], "tool_choice": {"type": "any"}}
    unchanged(anthropic_tool_choice, body)


@pytest.mark.parametrize(("choice", "shown"), [({"type": "tool", "name": "get_stock"}, "'get_stock'"),
                                               ({"type": "tool"}, "'None'")])
def test_anthropic_unknown_tool_is_a_400(choice: dict[str, Any], shown: str) -> None:
    for tools in (ANTHROPIC_TOOLS, None):
        body: dict[str, Any] = {"tool_choice": choice} | ({"tools": copy.deepcopy(tools)} if tools else {})
        assert rejected(anthropic_tool_choice, body).message == (
            f"tool_choice names the function {shown}, which is not in tools.")


@pytest.mark.parametrize("tools", [ANTHROPIC_TOOLS, None])
def test_anthropic_none_removes_tools_and_choice(tools: list[dict[str, Any]] | None) -> None:
    body: dict[str, Any] = {"max_tokens": 5, "tool_choice": {"type": "none"}}
    if tools is not None:
        body["tools"] = copy.deepcopy(tools)
    assert anthropic_tool_choice(body) is True
    assert body == {"max_tokens": 5}
    unchanged(anthropic_tool_choice, body)
