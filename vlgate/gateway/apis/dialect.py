"""What an API dialect is to the endpoint: how its errors look, whole and mid-stream.

Each API subpackage (`openai/`, `anthropic/`) builds its error bodies in one module and exposes one
`Dialect`; a route declares which one it speaks (`endpoint/route.py`), and the endpoint shapes every
error of that route through it: the gateway's own, the backend's answers and mid-stream events.
"""

from __future__ import annotations

from typing import Protocol

from vlgate.errors import APIError


class Dialect(Protocol):
    name: str

    def error_body(self, exc: APIError) -> bytes:
        """A whole error answer's body for the gateway's own error."""

    def error_event(self, exc: APIError) -> bytes:
        """An SSE event ending a stream that already started (the SDKs raise on it)."""

    def backend_error(self, status: int, data: bytes) -> tuple[int, bytes]:
        """The status and body to send for a backend's error answer (status >= 400)."""

    def stream_errors(self, chunk: bytes) -> bytes:
        """A stream chunk with the backend's mid-stream error events rewritten (others as they came)."""

    def id_headers(self, request_id: bytes) -> list[tuple[bytes, bytes]]:
        """The headers carrying the request id, as this API's SDK reads it."""
