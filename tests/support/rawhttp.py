"""Raw HTTP/1.1 bytes to a gateway: for what no client library sends (bad framing, Host tricks, floods)."""

from __future__ import annotations

import socket


def raw_request(port: int, head: bytes, timeout: float = 5.0) -> bytes:
    """Send `head` (and whatever body it carries) to 127.0.0.1:`port`; everything read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(head)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out
