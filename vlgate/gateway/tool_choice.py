"""A `tool_choice` that names a tool, in the only terms llama-server b11434 understands.

b11434 reads `tool_choice` as a string ("auto" | "none" | "required"); an object (Responses
`{"type": "function", "name"}` or `{"type": "allowed_tools", ...}`) silently becomes "auto", and its
Anthropic conversion turns `{"type": "tool", "name"}` into "required" over every tool and ignores
`{"type": "none"}`. The gateway keeps only the named tools in `tools` and asks for a call, so the
grammar can only produce the tool the client named.
"""

from __future__ import annotations

from typing import Any

from vlgate.errors import APIError


def _keep(body: dict[str, Any], names: set[str]) -> None:
    tools = [t for t in body.get("tools") or () if isinstance(t, dict) and t.get("name") in names]
    if not tools:
        raise APIError(400, f"tool_choice names {', '.join(sorted(names))}, which is not among 'tools'.",
                       param="tool_choice", code="invalid_value")
    body["tools"] = tools


def responses_tool_choice(body: dict[str, Any]) -> bool:
    """Rewrite an object `tool_choice` of a Responses request; True when the body changed."""
    choice = body.get("tool_choice")
    if not isinstance(choice, dict):
        return False
    kind = choice.get("type")
    if kind == "function" and isinstance(choice.get("name"), str):
        _keep(body, {choice["name"]})
        body["tool_choice"] = "required"
    elif kind == "allowed_tools" and choice.get("mode") in ("auto", "required"):
        _keep(body, {t.get("name") for t in choice.get("tools") or () if isinstance(t, dict)})
        body["tool_choice"] = choice["mode"]
    else:
        raise APIError(400, f"tool_choice of type {kind!r} is not supported here: use 'none', 'auto', 'required', "
                       "a function ({\"type\": \"function\", \"name\"}) or allowed_tools.", param="tool_choice",
                       code="invalid_value")
    return True


def anthropic_tool_choice(body: dict[str, Any]) -> bool:
    """Rewrite `{"type": "tool", "name"}` and `{"type": "none"}`; True when the body changed."""
    choice = body.get("tool_choice")
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind == "tool":
        _keep(body, {str(choice.get("name"))})
        body["tool_choice"] = {"type": "any"}
        return True
    if kind == "none":  # no call can be made when no tool is offered
        body.pop("tools", None)
        body.pop("tool_choice", None)
        return True
    return False
