"""A declared route called in-process: background responses and batch lines take the same road as a client.

The call is an ASGI request to the route's own `ApiEndpoint`, so every policy the route declares applies
(caps, key limits, presets, images, retries, accounting, the access log). The caller's identity travels in
the scope under `vlgate.caller` (the key's name, already checked when the job was accepted): a scope
built by uvicorn never has that key, so no client can set it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import orjson
from starlette.types import ASGIApp, Message

CALLER = "vlgate.caller"


@dataclass(frozen=True, slots=True)
class Caller:
    key: str | None  # the API key's name the work belongs to (None: a gateway without keys)
    kind: str = "internal"  # what made the call ("background", "batch"): for the access log


@dataclass(slots=True)
class Answer:
    status: int
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""

    def json(self) -> object:
        return orjson.loads(self.body) if self.body else None

    def header(self, name: bytes) -> bytes | None:
        return next((v for k, v in self.headers if k == name), None)


async def call(endpoint: ASGIApp, path: str, body: bytes, caller: Caller, *,
               request_id: str | None = None, leave: asyncio.Future[None] | None = None) -> Answer:
    """POST `body` to a route's endpoint (`Gateway.api_endpoints[path]`) as `caller`; the whole answer
    (non-stream). Cancelling the call cancels
    the request (its backend connection drops, the slot frees). `leave`: once it has a result, the caller
    leaves as a client would (a 499 in the access log and metrics, not a 500; the slot frees): the answer
    is then empty; a batch line preempted by interactive traffic leaves this way."""
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if request_id is not None:
        headers.append((b"x-request-id", request_id.encode()))
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": path, "raw_path": path.encode(),
             "query_string": b"", "root_path": "", "headers": headers, "client": None, "server": None,
             CALLER: caller}
    sent = False
    never = asyncio.get_running_loop().create_future()  # the caller never disconnects; cancellation ends it

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await (never if leave is None else leave)
        return {"type": "http.disconnect"}

    answer = Answer(status=500)
    parts: list[bytes] = []

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            answer.status = message["status"]
            answer.headers = list(message.get("headers", ()))
        elif message["type"] == "http.response.body":
            parts.append(message.get("body", b""))

    try:
        await endpoint(scope, receive, send)
    finally:
        never.cancel()
    answer.body = b"".join(parts)
    return answer
