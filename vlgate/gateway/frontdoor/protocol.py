"""The HTTP/1.1 front door: uvicorn's httptools protocol with the limits a proxy needs (as Envoy and NGINX have).

- request headers: a count and a total size (431 past either, before more is buffered);
- a header-read deadline: a client that trickles its headers (slowloris) is cut off;
- open connections: a cap (503 + Retry-After and close past it: a flood of idle sockets cannot
  exhaust the process's file descriptors or memory);
- the `Host` header (frontdoor/hosts.py): a loopback bind answers a foreign or missing one with 403
  (DNS rebinding) before the app sees the request, so no route can forget the check.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from vlgate.errors import APIError
from vlgate.gateway.apis.openai.errors import OPENAI
from vlgate.gateway.frontdoor.hosts import HostPolicy


@dataclass(frozen=True, slots=True)
class FrontDoorLimits:
    max_header_bytes: int = 16 * 1024
    max_headers: int = 100
    header_timeout_s: float = 10.0
    max_connections: int = 4096


class _HeadersTooLarge(Exception):
    pass


_HOST_REFUSED = OPENAI.error_body(APIError(
    403, "This gateway serves only its own host names: the Host header is not localhost, a loopback address or "
    "in gateway.allowed_hosts.", code="host_not_allowed"))


async def _refuse_host(scope: Any, receive: Any, send: Any) -> None:
    """The ASGI app a refused `Host` gets instead of the gateway's: 403, connection closed. Run as
    uvicorn's request cycle, so a pipelined request is answered in order and its body is discarded."""
    await send({"type": "http.response.start", "status": 403, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(_HOST_REFUSED)).encode()),
        (b"x-should-retry", b"false"), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": _HOST_REFUSED})


def _close_with(transport: asyncio.Transport, status: bytes, message: str, extra: bytes = b"") -> None:
    """Answer before any request reached the app (no route known yet: OpenAI's dialect) and close."""
    code = int(status.split(b" ", 1)[0])
    name = status.split(b" ", 1)[1].decode().lower().replace(" ", "_")
    body = OPENAI.error_body(APIError(code, message, type="service_unavailable" if code == 503 else None, code=name))
    transport.write(b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\ncontent-length: "
                    + str(len(body)).encode() + b"\r\nconnection: close\r\nx-should-retry: false\r\n" + extra
                    + b"\r\n" + body)
    transport.close()


DEPARTURE = "vlgate.departure"  # the scope key of a request's Departure


class Departure:
    """Tells a running request that its client's connection closed: the protocol calls `fire()` from
    `connection_lost`, and the endpoint's `on_gone` cancels the request (the upstream connection drops, the
    slot frees). Before, a task per request waited on receive() for `http.disconnect`: creating, stepping
    and cancelling it was ~3% of the gateway's CPU per non-stream chat (py-spy, c=16). This also reaches a
    pipelined request that uvicorn's own disconnect flag (set on its newest cycle only) misses."""

    __slots__ = ("gone", "on_gone")

    def __init__(self) -> None:
        self.gone = False
        self.on_gone: Callable[[], object] | None = None

    def fire(self) -> None:
        if not self.gone:
            self.gone = True
            if self.on_gone is not None:
                self.on_gone()


class HeaderDeadlines:
    """Overdue request headers are found by one sweep every SWEEP_S over the open connections, not by a timer
    per request: `call_later` + `cancel` per request cost ~1.4% of the gateway's instructions at 16
    concurrent chats (callgrind, nonstream, fake backend); a float per connection costs next to nothing. A
    slow client is cut off up to SWEEP_S after its deadline."""

    SWEEP_S = 0.25

    def __init__(self) -> None:
        self._sweeping = False

    def watch(self, loop: asyncio.AbstractEventLoop, connections: set[Any]) -> None:
        if not self._sweeping:
            self._sweeping = True
            loop.call_later(self.SWEEP_S, self._sweep, loop, connections)

    def _sweep(self, loop: asyncio.AbstractEventLoop, connections: set[Any]) -> None:
        now = loop.time()
        for protocol in list(connections):
            too_slow = getattr(protocol, "too_slow", None)
            if too_slow is not None:
                too_slow(now)
        if connections:
            loop.call_later(self.SWEEP_S, self._sweep, loop, connections)
        else:
            self._sweeping = False


def guarded_protocol(limits: FrontDoorLimits,
                     hosts: Callable[[], HostPolicy] | None = None) -> type[HttpToolsProtocol]:
    """An HttpToolsProtocol class enforcing `limits` and the `Host` policy `hosts()` returns (read per
    request: a reload may change `gateway.allowed_hosts`); uvicorn takes the class as `http=`."""
    deadlines = HeaderDeadlines()
    max_bytes, max_headers = limits.max_header_bytes, limits.max_headers

    class GuardedProtocol(HttpToolsProtocol):
        _header_bytes = 0
        _header_count = 0
        _host: bytes | None = None
        _hosts_seen = 0
        _headers_due: float | None = None  # when the headers being read must be complete (HeaderDeadlines)
        _refusal = ""
        _departures: list[tuple[Any, Departure]]  # (uvicorn's cycle, its Departure) of unanswered requests

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._departures = []
            if len(self.connections) > limits.max_connections:
                _close_with(transport, b"503 Service Unavailable",
                            f"Too many open connections (limit {limits.max_connections}).", b"retry-after: 1\r\n")
                return
            self._arm()
            deadlines.watch(self.loop, self.connections)

        def connection_lost(self, exc: Exception | None) -> None:
            super().connection_lost(exc)
            for cycle, departure in self._departures:
                if not cycle.response_complete:
                    departure.fire()
            self._departures = []

        def _arm(self) -> None:
            if self._headers_due is None:
                self._headers_due = self.loop.time() + limits.header_timeout_s

        def too_slow(self, now: float) -> None:
            """Called by the sweep: close a connection whose headers are overdue."""
            if self._headers_due is not None and self._headers_due <= now:
                self._headers_due = None
                if not self.transport.is_closing():
                    _close_with(self.transport, b"408 Request Timeout",
                                f"Request headers did not arrive within {limits.header_timeout_s:g}s.")

        def send_400_response(self, msg: str) -> None:
            # httptools turns our exception in a callback into a parser error, which uvicorn answers with 400
            if self._refusal:
                _close_with(self.transport, b"431 Request Header Fields Too Large", self._refusal)
            else:
                super().send_400_response(msg)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._header_bytes = 0
            self._header_count = 0
            self._host = None
            self._hosts_seen = 0
            self._arm()

        def on_url(self, url: bytes) -> None:
            self._header_bytes += len(url)
            if self._header_bytes > max_bytes:
                self._refuse()
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            # the happy path inline: this runs for every header of every request
            self._header_bytes += len(name) + len(value) + 4
            self._header_count += 1
            if self._header_bytes > max_bytes or self._header_count > max_headers:
                self._refuse()
            if len(name) == 4 and name.lower() == b"host":
                self._host = value.strip(b" \t")
                self._hosts_seen += 1
            super().on_header(name, value)

        def _refuse(self) -> None:
            if self._header_bytes > max_bytes:
                self._refusal = f"Request line and headers exceed {max_bytes} bytes."
            else:
                self._refusal = f"More than {max_headers} request headers."
            raise _HeadersTooLarge(self._refusal)

        def on_headers_complete(self) -> None:
            self._headers_due = None
            if hosts is not None and not hosts().allows(self._host if self._hosts_seen == 1 else None):
                # uvicorn starts (or queues, when pipelined) `self.app` for this request: the refusal instead
                app, self.app = self.app, _refuse_host
                try:
                    super().on_headers_complete()
                finally:
                    self.app = app
                return
            scope = self.scope
            departure = scope[DEPARTURE] = Departure()  # type: ignore[literal-required]
            super().on_headers_complete()
            cycle = self.cycle
            if cycle is not None and cycle.scope is scope:
                if self._departures:
                    self._departures = [d for d in self._departures if not d[0].response_complete]
                self._departures.append((cycle, departure))

    return GuardedProtocol

