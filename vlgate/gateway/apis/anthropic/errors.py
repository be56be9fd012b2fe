"""Errors on the Anthropic routes in Anthropic's shape: `{"type": "error", "error": {"type", "message"}}`.

The gateway's own errors and llama-server's (which are OpenAI-shaped on `/v1/messages` too) are
rewritten on the way out by an ASGI wrapper around the endpoint, so the request path stays the one
chat uses. Mid-stream failures become an Anthropic `error` event, which the anthropic SDK raises.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vlgate.gateway.endpoint import sse

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "not_found_error", 405: "invalid_request_error", 413: "request_too_large",
          422: "invalid_request_error", 429: "rate_limit_error", 503: "overloaded_error", 504: "timeout_error",
          529: "overloaded_error"}


def error_type(status: int) -> str:
    return _TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")


def anthropic_error(status: int, data: Any) -> dict[str, Any]:
    """Anthropic's error object for an error body in any shape (ours or llama-server's)."""
    if isinstance(data, dict) and data.get("type") == "error" and isinstance(data.get("error"), dict):
        return data
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict):
        message = str(err.get("message") or err)
    elif isinstance(err, str):
        message = err
    else:
        message = f"The request failed with status {status}."
    return {"type": "error", "error": {"type": error_type(status), "message": message}}


def _from_bytes(status: int, body: bytes) -> bytes:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = {"error": body.decode("utf-8", "replace")[:500] or None}
    return orjson.dumps(anthropic_error(status, data))


def stream_error(event: bytes) -> bytes:
    """An SSE error event (`data: {"error": ...}`, or b11434's `event: error` with OpenAI fields) in
    Anthropic's form; the status of the error it carries, else 500."""
    _, data = sse.parse(event)
    inner = data.get("error") if isinstance(data, dict) and isinstance(data.get("error"), dict) else data
    status = inner.get("code") if isinstance(inner, dict) and isinstance(inner.get("code"), int) else 500
    wrapped = data if isinstance(data, dict) and "error" in data else {"error": data}
    return sse.event("error", anthropic_error(status, wrapped))


def is_error(event: bytes) -> bool:
    """An SSE error event, in b11434's or the gateway's chat form."""
    return event.startswith((b"event: error", b'data: {"error"'))


class AnthropicErrors:
    """ASGI wrapper: error responses and mid-stream error events of `app` leave in Anthropic's shape."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        held: Message | None = None  # an error response's start, sent once its body is rewritten
        body: list[bytes] = []

        async def rewrite(message: Message) -> None:
            nonlocal held
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                # the anthropic SDK reads `request-id`
                headers += [(b"request-id", v) for k, v in headers if k == b"x-request-id"]
                message = {**message, "headers": headers}
                if message["status"] >= 400:
                    held = message
                    return
            elif held is not None:
                body.append(message.get("body", b""))
                if message.get("more_body"):
                    return
                data = _from_bytes(held["status"], b"".join(body))
                headers = [(k, v) for k, v in held["headers"] if k not in (b"content-length", b"content-type")]
                headers += [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
                await send({**held, "headers": headers})
                message = {"type": "http.response.body", "body": data}
            elif is_error(message.get("body", b"")):  # the gateway's own mid-stream error event
                message = {**message, "body": stream_error(message["body"].rstrip(b"\n"))}
            await send(message)

        await self.app(scope, receive, rewrite)
