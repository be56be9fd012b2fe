"""Errors llama-server answers, passed on in OpenAI's complete shape.

llama-server's error body is `{"error": {"code": <http status>, "message", "type"}}`: no `param`, an
int `code`, and its own `type` names. Clients branch on OpenAI's names (LangChain trims history on
`code == "context_length_exceeded"`), so the body is completed; llama-server's extra fields
(`n_prompt_tokens`, `n_ctx`) stay. A 500 that is really a bad request becomes a 400 (`fidelity`).
"""

from __future__ import annotations

from typing import Any

import orjson

from vlgate.errors import error_type
from vlgate.gateway.apis.openai.completion import client_fault

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
    fault = client_fault(status, data)
    if fault is not None:
        return 400, fault
    if status == 501:  # a feature the backend was not started with (e.g. embeddings): no server fault, a 4xx
        status = 400
    try:
        body: Any = orjson.loads(data)
    except orjson.JSONDecodeError:
        body = None
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        text = data.decode("utf-8", errors="replace").strip()[:500] or f"HTTP {status}"
        err = {"message": f"The backend answered {status}: {text}"}
    elif set(err) >= {"message", "type", "param", "code"} and isinstance(err.get("code"), (str, type(None))):
        return status, data  # already complete
    kind = err.get("type") if isinstance(err.get("type"), str) else ""
    openai_type, code, param = _KNOWN.get(kind, (error_type(status), kind or None, None))
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
            events[i] = b"data: " + complete_error(status, payload)[1]
    return b"\n\n".join(events)
