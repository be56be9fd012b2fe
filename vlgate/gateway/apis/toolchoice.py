"""A named `tool_choice`, made to hold: llama-server b11434 reads `tool_choice` only as a string, so
`{"type": "function", "function": {"name": X}}` acts as "auto" there and the model may call another tool.
The gateway narrows `tools` to X and asks for "required", which the backend's grammar enforces.

The same for the other APIs: Responses (`{"type": "function", "name"}`, `{"type": "allowed_tools"}`,
silently "auto" in b11434) and Anthropic (`{"type": "tool", "name"}` becomes "any tool" in b11434's
conversion, and `{"type": "none"}` is ignored there).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vlgate.errors import APIError


def _narrow(body: dict[str, Any], names: set[str], name_of: Callable[[dict[str, Any]], Any]) -> None:
    """Keep only the named tools; 400 when none of them is given."""
    tools = [t for t in body.get("tools") or () if isinstance(t, dict) and name_of(t) in names]
    if not tools:
        shown = ", ".join(repr(n) for n in sorted(names, key=str))
        raise APIError(400, f"tool_choice names the function {shown}, which is not in tools.", param="tool_choice",
                       code="invalid_value")
    body["tools"] = tools


def pin_named_tool(body: dict[str, Any]) -> bool:
    """Rewrite a named tool_choice in place (True when the body changed); 400 when it names no given tool."""
    choice = body.get("tool_choice")
    if not isinstance(choice, dict):
        return False
    function = choice.get("function")
    name = function.get("name") if isinstance(function, dict) else None
    if choice.get("type") != "function" or not isinstance(name, str):
        raise APIError(400, 'tool_choice must be "none", "auto", "required" or {"type": "function", '
                       '"function": {"name": ...}}.', param="tool_choice", code="invalid_value")
    _narrow(body, {name}, lambda t: (t.get("function") or {}).get("name"))
    body["tool_choice"] = "required"
    return True


def _flat_name(tool: dict[str, Any]) -> Any:
    return tool.get("name")  # Responses and Anthropic tools carry their name at the top


def responses_tool_choice(body: dict[str, Any]) -> bool:
    """Rewrite an object `tool_choice` of a Responses request; True when the body changed."""
    choice = body.get("tool_choice")
    if not isinstance(choice, dict):
        return False
    kind = choice.get("type")
    if kind == "function" and isinstance(choice.get("name"), str):
        _narrow(body, {choice["name"]}, _flat_name)
        body["tool_choice"] = "required"
    elif kind == "allowed_tools" and choice.get("mode") in ("auto", "required"):
        _narrow(body, {str(t.get("name")) for t in choice.get("tools") or () if isinstance(t, dict)}, _flat_name)
        body["tool_choice"] = choice["mode"]
    else:
        raise APIError(400, f"tool_choice of type {kind!r} is not supported here: use 'none', 'auto', 'required', "
                       "a function ({\"type\": \"function\", \"name\"}) or allowed_tools.", param="tool_choice",
                       code="invalid_value")
    return True


def anthropic_tool_choice(body: dict[str, Any]) -> bool:
    """Rewrite `{"type": "tool", "name"}` and `{"type": "none"}`; True when the body changed."""
    choice = body.get("tool_choice")
    if not isinstance(choice, dict):
        return False
    kind = choice.get("type")
    if kind == "tool":
        _narrow(body, {str(choice.get("name"))}, _flat_name)
        body["tool_choice"] = {"type": "any"}  # b11434 makes "any" a required call
        return True
    if kind == "none":  # no call can be made when no tool is offered
        body.pop("tools", None)
        body.pop("tool_choice", None)
        return True
    return False
