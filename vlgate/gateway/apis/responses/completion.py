"""Make llama-server's Responses answers look like OpenAI's, so the openai SDK's strict validation accepts them.

b11434's response object lacks `parallel_tool_calls`, `tool_choice`, `tools` (required by the SDK) and
`usage.output_tokens_details`; its lifecycle events carry only `id/object/status`. OpenAI echoes the
request's settings on every response object: `Echo` keeps them from the request and fills them in.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vlgate.gateway.apis.openai.completion import rewrite_object

# request fields OpenAI echoes on the response object, with OpenAI's defaults
_ECHOED: dict[str, Any] = {
    "instructions": None, "max_output_tokens": None, "temperature": None, "top_p": None,
    "previous_response_id": None, "metadata": {}, "store": False, "truncation": "disabled", "background": False,
}

# what the gateway adds to the finished response object: (response, request echo) -> None
Finisher = Callable[[dict[str, Any], "Echo"], None]


@dataclass(slots=True)
class Echo:
    """The request settings a response object repeats."""

    fields: dict[str, Any]
    finish: Finisher | None = None  # e.g. a preset's parsed result
    cap: int | None = None  # the max_output_tokens sent upstream (a preset may have set it)
    id: str | None = None  # the gateway's id for a stored response (else the backend's): the id the client keeps
    created_at: int = field(default_factory=lambda: int(time.time()))

    @classmethod
    def of(cls, body: dict[str, Any], finish: Finisher | None = None) -> Echo:
        fields = {k: default if body.get(k) is None else body[k] for k, default in _ECHOED.items()}
        fields["model"] = body.get("model") or ""  # lifecycle events: b11434 names no model until the end
        fields["parallel_tool_calls"] = body.get("parallel_tool_calls") is not False
        fields["tool_choice"] = body.get("tool_choice") or "auto"
        fields["tools"] = [_echo_tool(t) for t in body.get("tools") or ()]
        given = body.get("text")
        text: dict[str, Any] = given if isinstance(given, dict) else {}
        fields["text"] = {**text, "format": text.get("format") or {"type": "text"}}
        if isinstance(body.get("metadata"), dict):
            fields["metadata"] = body["metadata"]
        return cls(fields, finish, body.get("max_output_tokens"))

    def skeleton(self, response: dict[str, Any], status: str) -> dict[str, Any]:
        """A lifecycle event's response object (created / in_progress): nothing generated yet."""
        return {"id": self.id or response.get("id", ""), "object": "response", "created_at": self.created_at,
                "status": status, "output": [], "error": None,
                "incomplete_details": None, "usage": None, **self.fields}


def complete_response(response: dict[str, Any], echo: Echo) -> dict[str, Any]:
    """Fill a finished response object (non-stream answer, `response.completed` event) in place."""
    for key, value in echo.fields.items():
        response.setdefault(key, value)
    if echo.id is not None:
        response["id"] = echo.id
    response.setdefault("object", "response")
    response.setdefault("created_at", echo.created_at)
    response.setdefault("status", "completed")
    response.setdefault("error", None)
    response.setdefault("incomplete_details", None)
    response.setdefault("output", [])
    for item in response["output"]:
        complete_item(item)
    usage = response.get("usage")
    if isinstance(usage, dict):
        details = usage.setdefault("input_tokens_details", {})
        if isinstance(details, dict):
            details.setdefault("cached_tokens", 0)
            details.setdefault("cache_write_tokens", 0)  # required by openai 3.x; llama-server has no such count
        usage.setdefault("output_tokens_details", {"reasoning_tokens": 0})
        usage.setdefault("total_tokens", usage.get("input_tokens", 0) + usage.get("output_tokens", 0))
        # b11434 says "completed" even when max_output_tokens cut the answer; OpenAI says "incomplete"
        if echo.cap and response["status"] == "completed" and usage.get("output_tokens", 0) >= echo.cap:
            response["status"] = "incomplete"
            response["incomplete_details"] = {"reason": "max_output_tokens"}
    if echo.finish is not None:
        echo.finish(response, echo)
    return response


def complete_item(item: Any) -> None:
    """Output items: content parts need `annotations`; items need a `status`."""
    if not isinstance(item, dict):
        return
    item.setdefault("status", "completed")
    if item.get("type") == "message":
        for part in item.get("content") or ():
            if isinstance(part, dict) and part.get("type") == "output_text":
                part.setdefault("annotations", [])
                part.setdefault("logprobs", [])


def complete_response_bytes(data: bytes, echo: Echo) -> bytes:
    """A non-stream 200 body."""
    return rewrite_object(data, lambda response: complete_response(response, echo))


def output_text(response: dict[str, Any]) -> str:
    """The concatenated output_text of a response object (what a preset parses)."""
    return "".join(part.get("text") or "" for item in response.get("output") or () if item.get("type") == "message"
                   for part in item.get("content") or () if part.get("type") == "output_text")


# a function tool as the response object's schema has it: its own fields only, `defer_loading` not null
_TOOL_FIELDS = ("type", "name", "description", "parameters", "output_schema", "strict", "defer_loading",
                "allowed_callers")


def _echo_tool(tool: dict[str, Any]) -> dict[str, Any]:
    echoed = {"strict": True, "parameters": None, "description": None}
    echoed.update((k, v) for k, v in tool.items() if k in _TOOL_FIELDS and not (k == "defer_loading" and v is None))
    return echoed
