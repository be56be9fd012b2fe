"""The OpenAI error dialect: `{"error": {"message", "type", "param", "code"}}`, built here and nowhere else.

Three sources meet here: the gateway's own `APIError`s (a JSON body, or a `data: {"error": ...}` event
mid-stream, which the openai SDK raises on: a silent close would look complete), and llama-server's error
answers and mid-stream error events. llama-server's error body is `{"error": {"code": <http status>,
"message", "type"}}`: no `param`, an int `code`, and its own `type` names. Clients branch on OpenAI's names
(LangChain trims history on `code == "context_length_exceeded"`), so the body is completed; llama-server's
extra fields (`n_prompt_tokens`, `n_ctx`) stay. A 500 that is really a bad request becomes a 400.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

from vlgate.errors import APIError, error_type


class OpenAIDialect:
    """Errors in OpenAI's shape (chat, completions, embeddings, Responses, token routes)."""

    name = "openai"

    def error_body(self, exc: APIError) -> bytes:
        return orjson.dumps(error_object(exc))

    def error_event(self, exc: APIError) -> bytes:
        return b"data: " + orjson.dumps(error_object(exc)) + b"\n\n"

    def backend_error(self, status: int, data: bytes) -> tuple[int, bytes]:
        return complete_error(status, data)

    def stream_errors(self, chunk: bytes) -> bytes:
        return complete_stream_errors(chunk)

    def id_headers(self, request_id: bytes) -> list[tuple[bytes, bytes]]:
        return [(b"x-request-id", request_id)]


def error_object(exc: APIError) -> dict[str, Any]:
    return {"error": {"message": exc.message, "type": exc.type, "param": exc.param, "code": exc.code}}


OPENAI = OpenAIDialect()

# llama-server answers some bad input with 500 (a C++ exception that is not invalid_argument);
# to the client that is a 400: the request, not the server, is at fault, and retrying cannot help.
_CLIENT_FAULTS = (b"Failed to parse", b"Unsupported", b"Failed to load image", b"failed to process image",
                  b"Invalid", b"invalid", b"not supported")


def client_fault(status: int, data: bytes) -> bytes | None:
    """A 400 body for a backend 500 that is really a bad request (its message says so); None when it is a real
    server error. Only the message is read: a `type` of `invalid_request_error` is no such marker."""
    if status != 500 or not any(marker in data for marker in _CLIENT_FAULTS):
        return None
    try:
        err = orjson.loads(data)["error"]
        message = str(err["message"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    if not any(marker.decode() in message for marker in _CLIENT_FAULTS):
        return None
    return orjson.dumps({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                   "code": "invalid_request"}})


def backend_status(status: int, data: bytes) -> int:
    """The status a backend's error answer leaves with: a client's fault is a 400 whatever the backend said."""
    if client_fault(status, data) is not None or status == 501:  # 501: a feature the backend lacks, not a fault
        return 400
    return status


# llama-server error types -> (OpenAI type, code, param)
_KNOWN: dict[str, tuple[str, str, str | None]] = {
    "exceed_context_size_error": ("invalid_request_error", "context_length_exceeded", "messages"),
    "invalid_request_error": ("invalid_request_error", "invalid_request", None),
    "authentication_error": ("authentication_error", "invalid_api_key", None),
    "not_found_error": ("not_found_error", "not_found", None),
    "permission_error": ("permission_error", "permission_denied", None),
    "not_supported_error": ("invalid_request_error", "not_supported", None),
    "unavailable_error": ("service_unavailable", "backend_unavailable", None),
    "server_error": ("server_error", "backend_error", None),
}


def complete_error(status: int, data: bytes) -> tuple[int, bytes]:
    """The status and body to send for a backend's error answer (status >= 400)."""
    try:
        body: Any = orjson.loads(data)
    except orjson.JSONDecodeError:
        body = None
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict) and set(err) >= {"message", "type", "param", "code"} \
            and isinstance(err.get("code"), (str, type(None))):
        return backend_status(status, data), data  # already complete (ours, or a node gateway's)
    fault = client_fault(status, data)
    if fault is not None:
        return 400, fault
    sent = status
    if status == 501:  # a feature the backend was not started with (e.g. embeddings): no server fault, a 4xx
        status = 400
    if not isinstance(err, dict):
        text = data.decode("utf-8", errors="replace").strip()[:500] or f"HTTP {sent}"
        err = {"message": f"The backend answered {sent}: {text}"}
    kind = str(err["type"]) if isinstance(err.get("type"), str) else ""
    openai_type, code, param = _KNOWN.get(kind) or (error_type(status), kind or None, None)
    out = {k: v for k, v in err.items() if k not in ("message", "type", "param", "code")}
    out = {"message": str(err.get("message") or f"HTTP {status}"), "type": openai_type,
           "param": err.get("param") if isinstance(err.get("param"), str) else param, "code": code, **out}
    return status, orjson.dumps({"error": out})


_ERROR_EVENT = b'data: {"error"'


def complete_stream_errors(chunk: bytes) -> bytes:
    """A stream chunk whose `data: {"error": ...}` events (llama-server's mid-stream failures) are completed."""
    if _ERROR_EVENT not in chunk:
        return chunk
    events = chunk.split(b"\n\n")
    for i, event in enumerate(events):
        if event.startswith(_ERROR_EVENT):
            payload = event[6:]
            try:
                code = orjson.loads(payload)["error"].get("code")
            except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError):
                continue  # split across chunks or not JSON: passed on as it came
            status = code if isinstance(code, int) and 400 <= code < 600 else 500
            line_end = event[len(event.rstrip(b"\r\n")):]  # a chunk may end inside the blank line: keep it
            events[i] = b"data: " + complete_error(status, payload)[1] + line_end
    return b"\n\n".join(events)


def response(exc: APIError) -> Response:
    """The error as a Starlette response (the GET routes, 404/405 and the front door's own answers)."""
    return Response(OPENAI.error_body(exc), status_code=exc.status, media_type="application/json",
                    headers=exc.response_headers())
