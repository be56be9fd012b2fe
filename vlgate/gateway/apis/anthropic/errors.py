"""The Anthropic error dialect: `{"type": "error", "error": {"type", "message"}}`, built here and nowhere else.

The gateway's own errors are rendered in this shape directly; llama-server's (OpenAI-shaped on
`/v1/messages` too) are read and rewritten. Mid-stream failures become an Anthropic `event: error`,
which the anthropic SDK raises on. The SDK reads the request id from `request-id`.
"""

from __future__ import annotations

from typing import Any

import orjson

from vlgate.errors import APIError
from vlgate.gateway.apis.openai.errors import backend_status
from vlgate.gateway.endpoint import sse

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "not_found_error", 405: "invalid_request_error", 413: "request_too_large",
          422: "invalid_request_error", 429: "rate_limit_error", 503: "overloaded_error", 504: "timeout_error",
          529: "overloaded_error"}


def error_type(status: int) -> str:
    return _TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")


def error_object(status: int, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error_type(status), "message": message}}


def message_of(status: int, data: Any) -> str:
    """The message of an error body in any shape (OpenAI's, llama-server's, Anthropic's, or none)."""
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict):
        return str(err.get("message") or err)
    if isinstance(err, str):
        return err
    return f"The request failed with status {status}."


def stream_error(event: bytes) -> bytes:
    """An SSE error event (`data: {"error": ...}`, or b11434's `event: error` with OpenAI fields) in
    Anthropic's form; the status of the error it carries, else 500."""
    _, data = sse.parse(event)
    if isinstance(data, dict) and data.get("type") == "error" and isinstance(data.get("error"), dict):
        return sse.event("error", data)  # already Anthropic's
    inner = data.get("error") if isinstance(data, dict) and isinstance(data.get("error"), dict) else data
    code = inner.get("code") if isinstance(inner, dict) else None
    status = code if isinstance(code, int) else 500
    wrapped = data if isinstance(data, dict) and "error" in data else {"error": data}
    return sse.event("error", error_object(status, message_of(status, wrapped)))


def is_error(event: bytes) -> bool:
    """An SSE error event, in b11434's or OpenAI's chat form."""
    return event.startswith((b"event: error", b'data: {"error"'))


class AnthropicDialect:
    """Errors in Anthropic's shape (`/v1/messages`, `/v1/messages/count_tokens`)."""

    name = "anthropic"

    def error_body(self, exc: APIError) -> bytes:
        return orjson.dumps(error_object(exc.status, exc.message))

    def error_event(self, exc: APIError) -> bytes:
        return sse.event("error", error_object(exc.status, exc.message))

    def backend_error(self, status: int, data: bytes) -> tuple[int, bytes]:
        status = backend_status(status, data)
        try:
            parsed: Any = orjson.loads(data)
        except orjson.JSONDecodeError:
            parsed = {"error": data.decode("utf-8", "replace")[:500] or None}
        if isinstance(parsed, dict) and parsed.get("type") == "error" and isinstance(parsed.get("error"), dict):
            return status, data
        return status, orjson.dumps(error_object(status, message_of(status, parsed)))

    def stream_errors(self, chunk: bytes) -> bytes:
        if b"error" not in chunk:
            return chunk
        events = chunk.split(b"\n\n")
        for i, event in enumerate(events):
            body = event.rstrip(b"\r\n")
            if is_error(body) and sse.parse(body)[1] is not None:  # whole events only; a cut one as it came
                events[i] = stream_error(body)[:-2] + event[len(body):]
        return b"\n\n".join(events)

    def id_headers(self, request_id: bytes) -> list[tuple[bytes, bytes]]:
        return [(b"x-request-id", request_id), (b"request-id", request_id)]


ANTHROPIC = AnthropicDialect()
