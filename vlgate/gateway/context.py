"""What one request carries along the path: for routing, post-processing and the access-log line."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


class StreamTap(Protocol):
    def feed(self, chunk: bytes) -> bytes: ...
    def flush(self) -> bytes: ...


@dataclass(slots=True)
class RequestContext:
    """What one request carries along the path (for routing, post-processing and the log line)."""

    route: str
    started: float
    id: str = ""
    body_changed: bool = False
    stream: bool = False
    affinity: object | None = None
    backend: str | None = None
    attempts: int = 0
    ttfb: float | None = None
    mid_stream_error: bool = False
    finish: Callable[[bytes], bytes] | None = None  # non-stream post-processing (presets)
    stream_tap: StreamTap | None = None  # stream post-processing (presets)
