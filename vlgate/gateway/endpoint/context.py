"""What one request carries along the path: for routing, post-processing and the access-log line."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from vlgate.gateway.apis.dialect import Dialect
from vlgate.gateway.apis.openai.errors import OPENAI
from vlgate.gateway.endpoint.charges import GENERATION, Charges
from vlgate.gateway.observe.usage import StreamEnds, Tokens
from vlgate.gateway.routing.affinity import Affinity


class StreamTap(Protocol):
    def feed(self, chunk: bytes) -> bytes: ...
    def flush(self) -> bytes: ...


@dataclass(slots=True)
class RequestContext:
    """What one request carries along the path (for routing, post-processing and the log line)."""

    route: str
    started: float
    id: str = ""
    dialect: Dialect = OPENAI  # how this route's errors look (the route's declaration)
    charges: Charges = GENERATION  # what it costs the key (the route's declaration)
    body_changed: bool = False
    stream: bool = False
    affinity: Affinity | None = None  # the prefix keys, most specific first (gateway/affinity.py)
    backend: str | None = None
    attempts: int = 0
    ttfb: float | None = None
    mid_stream_error: bool = False
    key: str | None = None  # the API key's name (usage per key); never the key
    release_key: Callable[[], None] | None = None  # the key's concurrency place (gateway/keylimits.py)
    images: int = 0  # images in the request (usage per key)
    answer: bytes | None = None  # the non-stream answer as sent (usage is read from it at finish)
    last_sent: bytes = b""  # a stream's last chunk sent to the client (did it have the end? respond.py)
    tail: StreamEnds | None = None  # a stream's first and last bytes (usage is read from them at finish)
    finish: Callable[[bytes], bytes] | None = None  # non-stream post-processing (presets)
    stream_tap: StreamTap | None = None  # stream post-processing (presets)
    respond: Callable[[Any], Awaitable[int]] | None = None  # answers itself, given `send` (pipeline presets)
    # awaited once a 200 answer is complete, before its end reaches the client (a stored response exists by
    # the time the client has its id: apis/responses/state.py)
    persist: Callable[[], Awaitable[None]] | None = None
    spent: Tokens | None = None  # summed usage of the backend calls a pipeline made itself (charged at finish)
