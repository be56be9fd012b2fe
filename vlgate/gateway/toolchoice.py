"""A named `tool_choice`, made to hold: llama-server b11434 reads `tool_choice` only as a string, so
`{"type": "function", "function": {"name": X}}` acts as "auto" there and the model may call another tool.
The gateway narrows `tools` to X and asks for "required", which the backend's grammar enforces."""

from __future__ import annotations

from typing import Any

from vlgate.errors import APIError


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
    tools = [t for t in body.get("tools") or () if isinstance(t, dict) and (t.get("function") or {}).get("name") == name]
    if not tools:
        raise APIError(400, f"tool_choice names the function {name!r}, which is not in tools.", param="tool_choice",
                       code="invalid_value")
    body["tools"] = tools
    body["tool_choice"] = "required"
    return True
