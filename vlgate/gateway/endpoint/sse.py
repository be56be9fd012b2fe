"""Server-sent events as the rewriting taps see them: split a byte stream into events, read and write one.

llama-server ends every event with a blank line (`\\n\\n`); an event is `event: <name>` (optional) plus
one `data: <json>` line, or a `:` comment (its keep-alive ping).
"""

from __future__ import annotations

from typing import Any

import orjson


class EventSplitter:
    """Feed bytes as they arrive; get back the complete events (without their blank line)."""

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        *events, self._buf = (self._buf + chunk).split(b"\n\n")
        return events

    def rest(self) -> bytes:
        rest, self._buf = self._buf, b""
        return rest


def parse(event: bytes) -> tuple[str | None, Any]:
    """(event name, decoded data) of one event; data is None for comments and undecodable events."""
    name: str | None = None
    data: Any = None
    for line in event.split(b"\n"):
        if line.startswith(b"event:"):
            name = line[6:].strip().decode("utf-8", "replace")
        elif line.startswith(b"data:"):
            try:
                data = orjson.loads(line[5:])
            except orjson.JSONDecodeError:
                return name, None
    return name, data


def event(name: str | None, data: Any) -> bytes:
    """One event, with its blank line."""
    head = b"event: " + name.encode() + b"\n" if name else b""
    return head + b"data: " + orjson.dumps(data) + b"\n\n"
