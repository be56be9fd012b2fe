"""HTTP/1.1 response framing for the backend client (RFC 9112), on httptools' llhttp parser.

llhttp parses heads and decodes bodies; this part decides what a proxy must not leave to chance: which bytes
belong to the answer of the request in flight, where that answer ends, and whether its connection may carry
the next request. A connection is reusable only after a complete final answer, on HTTP/1.1 with keep-alive,
that arrived after the whole request went out, with not one byte after it: anything else is closed, so no
user can ever read the rest of another's answer.

- 1xx interim answers (100 Continue, 103 Early Hints, any 1xx) are read and skipped; the heads are split here
  (a 1xx has no body whatever its headers say, RFC 9110 15.2; llhttp would frame 104-199 by their headers).
  101 Switching Protocols was never asked for: a protocol error.
- Every head of one answer together is bounded by MAX_HEAD_BYTES and each section by MAX_FIELDS, as NGINX and
  Envoy bound theirs (the gateway answers 502); trailers are bounded alike and dropped (RFC 9110 6.5.1).
- Both Content-Length and Transfer-Encoding, duplicate lengths, bad chunk sizes, bare LF, obs-fold: llhttp's
  strict mode rejects them (RFC 9112 6.3 allows treating them as errors; it is the safe choice for a proxy).
- No length and no chunking: the body ends when the backend closes cleanly (never reused); HTTP/1.0 answers
  are never reused either.
"""

from __future__ import annotations

from typing import Protocol

import httptools

# The bounds of what a backend may send before its body, in one place (NGINX: "upstream sent too big header",
# 502; Envoy: max_response_headers_kb 60, max_response_headers_count 100).
MAX_HEAD_BYTES = 64 * 1024  # all heads of one answer together, 1xx included; trailers apart, alike
MAX_FIELDS = 100  # header fields in one head (or trailer section)

IDLE, HEAD, BODY, DONE, BROKEN = range(5)


class WireError(Exception):
    """The backend's connection failed, or what it sent is not HTTP."""


class Disconnected(WireError):
    """The backend closed the connection before its answer was complete."""


class BadResponse(WireError):
    """The backend's answer is not valid HTTP/1.1."""


class HeadTooLarge(BadResponse):
    """The answer's head is past MAX_HEAD_BYTES or MAX_FIELDS: a 502, as NGINX and Envoy answer."""


class Sink(Protocol):
    """Where a connection's answer goes (wire._Connection)."""

    def on_head(self, status: int, headers: list[tuple[bytes, bytes]]) -> None: ...
    def on_body(self, data: bytes) -> None: ...
    def on_done(self) -> None: ...
    def on_error(self, error: WireError) -> None: ...


class _Stop(Exception):
    """Raised in a parser callback to stop llhttp where it is."""


class _Interim:
    """What a throwaway parser saw of one 1xx head."""

    __slots__ = ("complete", "fields", "status")

    def __init__(self) -> None:
        self.fields = 0
        self.status = 0
        self.complete = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields += 1

    def on_headers_complete(self) -> None:
        self.complete = True


class Framing:
    """The answers on one connection, one at a time: `expect` when a request goes out, `feed` what arrives,
    `eof` when the backend closes. `reusable` says whether the connection may carry another request; `extra`
    that bytes came that no request asked for (the connection must close)."""

    __slots__ = (
        "_error",
        "_field_bytes",
        "_fields",
        "_head_used",
        "_headers",
        "_in_trailers",
        "_maybe_trailer",
        "_pending",
        "_trailer_bytes",
        "_v11",
        "extra",
        "keep_alive",
        "parser",
        "sink",
        "state",
        "status",
    )

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.parser = httptools.HttpResponseParser(self)
        self.state = IDLE
        self.extra = False
        self.expect()
        self.state = IDLE

    def expect(self) -> None:
        """A request goes out: the next bytes are its answer."""
        self.state = HEAD
        self.status = 0
        self.extra = self.keep_alive = self._v11 = False
        self._pending = b""
        self._head_used = self._fields = self._field_bytes = self._trailer_bytes = 0
        self._headers: list[tuple[bytes, bytes]] = []
        self._in_trailers = self._maybe_trailer = False
        self._error: WireError | None = None

    @property
    def reusable(self) -> bool:
        return self.state == DONE and self.keep_alive and not self.extra

    def idle(self) -> None:
        self.state = IDLE

    def abandon(self) -> None:
        """The connection is closing: whatever still arrives is ignored."""
        self.state = BROKEN

    def feed(self, data: bytes) -> None:
        state = self.state
        if state == BODY:
            self._feed_body(data)
        elif state == HEAD:
            self._feed_head(data)
        elif state != BROKEN:  # idle, or after the answer ended: never parsed into anything
            self.extra = True

    def eof(self) -> bool:
        """The backend closed cleanly. True when that ends the answer: no length, no chunking (RFC 9112 6.3)."""
        if self.state != BODY:
            return False
        te = cl = None
        for name, value in self._headers:
            if name == b"transfer-encoding":
                te = value
            elif name == b"content-length":
                cl = value
        framed = cl is not None if te is None else te.rsplit(b",", 1)[-1].strip().lower() == b"chunked"
        if framed:  # it should have ended by its length or last chunk: cut short
            return False
        self.state = DONE
        self.keep_alive = False
        self.sink.on_done()
        return True

    # -- splitting heads ------------------------------------------------------------------------------------
    def _feed_head(self, data: bytes) -> None:
        pending = self._pending + data if self._pending else data
        while True:
            end = pending.find(b"\r\n\r\n")
            if end < 0:
                if self._head_used + len(pending) > MAX_HEAD_BYTES:
                    self._fail(HeadTooLarge(f"response head past {MAX_HEAD_BYTES} bytes"))
                elif b"\n" in pending.replace(b"\r\n", b""):
                    self._fail(BadResponse("not HTTP/1.1: a line of the head ends in a bare LF"))
                else:
                    self._pending = pending
                return
            end += 4
            self._head_used += end
            if self._head_used > MAX_HEAD_BYTES:
                self._fail(HeadTooLarge(f"response head past {MAX_HEAD_BYTES} bytes"))
                return
            if pending[9:10] != b"1":  # the final answer's head: llhttp parses it and what follows
                self._pending = b""
                self._v11 = pending.startswith(b"HTTP/1.1 ")
                self.state = BODY
                self._feed_body(pending)
                return
            if not self._interim(pending[:end]):
                return
            pending = pending[end:]
            if not pending:
                self._pending = b""
                return

    def _interim(self, head: bytes) -> bool:
        """Check one 1xx head (a throwaway parser: it has no body, whatever llhttp would make of it)."""
        seen = _Interim()
        parser = httptools.HttpResponseParser(seen)
        try:
            parser.feed_data(head)
        except httptools.HttpParserError as exc:
            if not seen.complete:
                self._fail(BadResponse(f"not HTTP/1.1: {exc}"))
                return False
        status = parser.get_status_code()
        if not seen.complete or status == 101 or not 100 <= status < 200:
            self._fail(BadResponse(f"unexpected interim response {status}"))
            return False
        if seen.fields > MAX_FIELDS:
            self._fail(HeadTooLarge(f"more than {MAX_FIELDS} header fields"))
            return False
        return True

    # -- the final answer -----------------------------------------------------------------------------------
    def _feed_body(self, data: bytes) -> None:
        watching = self._maybe_trailer  # a trailer section may be arriving (nothing but it in this data)
        try:
            if len(data) > 1 and (data[-1] == 10 or data[-1] == 13):
                # llhttp skips CR and LF between messages, but they are not the answer's either: the last byte
                # apart, an answer that ends before it had bytes after it. (Any other byte after an answer
                # starts a message: on_message_begin sees it.)
                view = memoryview(data)
                self.parser.feed_data(view[:-1])
                if self.state == DONE:
                    self.extra = True
                    return
                self.parser.feed_data(view[-1:])
            else:
                self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if self.state == DONE:
                self.extra = True
            elif self.state == BODY:
                self._fail(self._error or BadResponse(f"not HTTP/1.1: {exc}"))
            return
        if watching and self._maybe_trailer and self.state == BODY:
            # httptools gathers a field whole before its callback: bound what it may gather
            self._trailer_bytes += len(data)
            if self._trailer_bytes > MAX_HEAD_BYTES:
                self._fail(HeadTooLarge(f"trailer section past {MAX_HEAD_BYTES} bytes"))

    def _fail(self, error: WireError) -> None:
        self.state = BROKEN
        self.sink.on_error(error)

    def _stop(self, error: WireError) -> None:
        self._error = error
        raise _Stop

    # -- httptools callbacks --------------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self.state != BODY:  # a second message after the answer: not parsed
            self.extra = True
            raise _Stop

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._in_trailers:
            self._trailer(name, value)
        else:  # the head's bytes are bounded already (_feed_head); its count is checked when it is complete
            self._headers.append((name.lower(), value.rstrip(b" \t")))  # a field value has no trailing OWS

    def _trailer(self, name: bytes, value: bytes) -> None:
        """Trailer fields are counted and dropped: none may be merged into the forwarded head (RFC 9110 6.5.1)."""
        self._fields += 1
        self._field_bytes += len(name) + len(value)
        if self._fields > MAX_FIELDS:
            self._stop(HeadTooLarge(f"more than {MAX_FIELDS} trailer fields"))
        if self._field_bytes > MAX_HEAD_BYTES:
            self._stop(HeadTooLarge(f"trailer fields past {MAX_HEAD_BYTES} bytes"))

    def on_headers_complete(self) -> None:
        parser = self.parser
        status = parser.get_status_code()
        if not 200 <= status <= 599:
            self._stop(BadResponse(f"invalid status {status}"))
        if not self._v11:  # _feed_head saw no "HTTP/1.1 "
            version = parser.get_http_version()
            if version != "1.0":
                self._stop(BadResponse(f"not HTTP/1.1: version {version}"))
        if len(self._headers) > MAX_FIELDS:
            self._stop(HeadTooLarge(f"more than {MAX_FIELDS} header fields"))
        self.status = status
        self._in_trailers = True
        self.sink.on_head(status, self._headers)

    def on_body(self, body: bytes) -> None:
        self._maybe_trailer = False
        self._trailer_bytes = 0
        self.sink.on_body(body)

    def on_chunk_header(self) -> None:
        self._maybe_trailer = True

    def on_message_complete(self) -> None:
        self.state = DONE
        self.keep_alive = self._v11 and self.parser.should_keep_alive()
        self.sink.on_done()
