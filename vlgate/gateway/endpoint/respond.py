"""Write answers to the ASGI `send`: JSON bodies, errors, and SSE streams passed through as bytes.

Stream chunks go out as they arrive, unparsed. Only when a preset needs the model's text is the
stream tapped (see `SSETap`). A backend failing mid-stream ends the stream with an SSE error
event: a silent close would look like a complete answer to the openai SDK.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from starlette.types import Send

from vlgate.backends import BackendState
from vlgate.errors import APIError
from vlgate.gateway.forward.wire import WireError
from vlgate.gateway.observe.usage import StreamEnds

if TYPE_CHECKING:
    from vlgate.gateway.endpoint.context import RequestContext
    from vlgate.gateway.forward.forwarder import Upstream

log = logging.getLogger("vlgate.gateway.endpoint.respond")

_JSON = (b"content-type", b"application/json")


async def send_json_bytes(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None,
                          ) -> None:
    out = [(k, v) for k, v in headers or () if k != b"content-type"]
    out.append(_JSON)
    out.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": out})
    await send({"type": "http.response.body", "body": body})


async def send_error(send: Send, exc: APIError, ctx: RequestContext) -> None:
    """The error in the route's dialect, with the request id; nothing when the answer already started."""
    headers = [(k.lower().encode(), v.encode()) for k, v in exc.response_headers().items()]
    headers += ctx.dialect.id_headers(ctx.id.encode())
    try:
        await send_json_bytes(send, exc.status, ctx.dialect.error_body(exc), headers)
    except (OSError, RuntimeError):  # the response had already started or the client is gone
        pass


async def read_answer(upstream: Upstream) -> bytes:
    """A non-stream body; a backend that dies while sending it is a 503 (nothing reached the client)."""
    try:
        return await upstream.response.read()
    except (WireError, TimeoutError) as exc:
        upstream.failed(BackendState.SUSPECT, f"failed while answering: {type(exc).__name__}")
        raise APIError(503, f"The backend failed while sending its answer ({type(exc).__name__}).",
                       code="backend_error", headers={"Retry-After": "1"}) from None


# the last event of a whole stream, per API: OpenAI chat/completions, Anthropic, the Responses API's three ends
_STREAM_ENDS = (b"data: [DONE]", b"message_stop", b"response.completed", b"response.incomplete", b"response.failed")


def stream_finished(ctx: RequestContext) -> bool:
    """Whether the client had the stream's last event: a client that leaves then (the SDKs close on [DONE],
    before the backend's own end arrives) got the whole answer, a 200, not a 499."""
    return ctx.stream and any(end in ctx.last_sent for end in _STREAM_ENDS)


async def stream_upstream(send: Send, upstream: Upstream, ctx: RequestContext) -> None:
    """Pass the SSE body through; on a mid-stream backend failure, end with an error event."""
    headers = upstream.headers()
    headers.append((b"x-accel-buffering", b"no"))
    headers += ctx.dialect.id_headers(ctx.id.encode())
    await send({"type": "http.response.start", "status": upstream.status, "headers": headers})
    tap = ctx.stream_tap
    response = upstream.response
    ends = ctx.tail = StreamEnds()  # the backend's own usage/timings events, read at finish
    try:
        while True:
            chunk = await response.readany()
            if not chunk:
                break
            ends.feed(chunk)
            if tap is not None:
                chunk = tap.feed(chunk)
                if not chunk:
                    continue
            # the backend's mid-stream error events in the route's dialect (one substring search otherwise)
            chunk = ctx.last_sent = ctx.dialect.stream_errors(chunk)
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    except (WireError, TimeoutError) as exc:
        backend = upstream.backend
        log.warning("backend %s failed mid-stream: %s", backend.name, exc)
        upstream.failed(BackendState.SUSPECT, f"failed mid-stream: {type(exc).__name__}")
        upstream.close()
        ctx.mid_stream_error = True
        err = APIError(502, f"The backend failed while streaming ({type(exc).__name__}); the answer is incomplete.",
                       type="server_error", code="backend_stream_error")
        await send({"type": "http.response.body", "body": ctx.dialect.error_event(err), "more_body": True})
    else:
        upstream.response.release()
        upstream.release()
        upstream.succeeded()
        if ctx.persist is not None:  # the tap holds the final event until it is stored
            await ctx.persist()
        if tap is not None:
            rest = tap.flush()
            if rest:
                ctx.last_sent = rest
                await send({"type": "http.response.body", "body": rest, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})
