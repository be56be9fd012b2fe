"""The gateway's HTTP/1.1 client for its backends: keep-alive connections on asyncio, httptools' parser.

The proxy forwards one JSON POST per request and passes bytes through, so it needs a small part of
what a general client does. aiohttp's request path (cookies, URL building, auto headers, payload
registry, tracing, timeouts per request) measured about a third of the gateway's CPU per request
at 16 concurrent requests (py-spy, ../shared/bench); this does the same forwarding with one write and
llhttp (the parser uvicorn and Node use) for the answer. aiohttp stays for image fetches, httpx for
the control plane.

Framing by RFC 9112 (1xx skipped, bytes after an answer never parsed and never pooled, head bounds) is
forward/http1.py. h11 would give those guarantees by itself, but parsing alone measured 45.7 us per
non-stream llama-server answer (httptools: 1.5 us) and 276 us per 32-token stream (httptools: 4.5 us),
more than this client's whole cost per request (~22 us CPU with a minimal responder, one process): it is
the reference of tests/gateway/test_wire_rfc.py instead. The framing checks cost ~2 us per request (x1.10).
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
from urllib.parse import urlsplit

from vlgate.gateway.duesweep import DueSweep
from vlgate.gateway.forward.http1 import (
    BadResponse,
    Disconnected,
    Framing,
    HeadTooLarge,
    WireError,
)

__all__ = ["BadResponse", "Client", "Disconnected", "HeadTooLarge", "Pool", "Response", "WireError"]
_IDLE_S = 4.0  # llama-server (cpp-httplib) closes idle keep-alive connections after 5 s
_PAUSE_BYTES = 1 << 20  # a slow client: stop reading the backend past this much buffered
# a whole (non-stream) answer held in memory: llama-server's largest are embeddings of long batches (2048
# inputs x 4096 floats as JSON text is ~80 MB); past this the answer is refused, never buffered further
MAX_ANSWER_BYTES = 256 << 20
_SMALL_BODY = 1 << 16  # below this, head + body go out in one write (one copy, one syscall)


class Response:
    """A backend answer whose headers arrived; the body streams in through `readany` or `read`."""

    __slots__ = (
        "_buffered",
        "_chunks",
        "_conn",
        "_deadline",
        "_done",
        "_error",
        "_read_timeout",
        "_settled",
        "_waiter",
        "_whole",
        "content_type",
        "headers",
        "status",
    )

    def __init__(self, conn: _Connection, read_timeout: float | None, deadline: float | None = None) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []  # names lower-case, in the backend's order
        self.content_type = ""
        self._conn = conn
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._done = False
        self._error: WireError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._read_timeout = read_timeout
        self._deadline = deadline
        self._whole = False  # read() takes the body whole: never pause for it
        self._settled = False  # released or closed

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    async def readany(self) -> bytes:
        """What has arrived (waiting for something), or b"" at the end. TimeoutError after `read_timeout`
        without a byte, or at the deadline; a `WireError` when the backend fails before the end."""
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self._done:
                return b""
            await self._wait()
        return self._take_buffered()

    async def read(self) -> bytes:
        """The whole body (TimeoutError at the deadline: a backend that stalls mid-body holds nothing)."""
        self._whole = True
        self._conn.resume()
        while not self._done:  # a failure ends it too (_finish), with _error set
            await self._wait()
        if self._error is not None:
            raise self._error
        return self._take_buffered() if self._chunks else b""

    def release(self) -> None:
        """Done with it: a complete answer leaves its connection for the next request, anything else drops it."""
        if not self._settled:
            self._settled = True
            self._conn.finished(reusable=self._done and self._error is None)

    def close(self) -> None:
        """Drop the connection (llama-server frees the slot when it closes); a no-op after `release`."""
        if not self._settled:
            self._settled = True
            self._conn.finished(reusable=False)

    async def _wait(self) -> None:
        loop = asyncio.get_running_loop()
        timeout = self._read_timeout
        if self._deadline is not None:
            left = self._deadline - loop.time()
            timeout = left if timeout is None or left < timeout else timeout
        waiter = self._waiter = loop.create_future()
        try:
            if timeout is None:
                await waiter
            else:
                async with asyncio.timeout(timeout):
                    await waiter
        finally:
            self._waiter = None

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        if self._whole and self._buffered > MAX_ANSWER_BYTES and not self._done:
            self._finish(BadResponse(f"a non-stream answer past {MAX_ANSWER_BYTES} bytes"))
            return
        if self._buffered > _PAUSE_BYTES and not self._whole:
            self._conn.pause()
        self._wake()

    def _take_buffered(self) -> bytes:
        """Everything buffered; reading resumes if it had paused."""
        data = self._chunks.popleft() if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks.clear()
        if self._buffered > _PAUSE_BYTES:
            self._conn.resume()
        self._buffered = 0
        return data

    def _finish(self, error: WireError | None = None) -> None:
        if not self._done:
            self._done = True
            self._error = error
        self._wake()


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one request at a time. http1.Framing says where each answer ends."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.framing = Framing(self)
        self.response: Response | None = None
        self.headers_ready: asyncio.Future[None] | None = None
        self.lost = False
        self.received = False  # any byte of the current answer
        self.idle_since = 0.0
        self.paused = False

    # -- asyncio.Protocol ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not an asyncio.Transport subclass

    def data_received(self, data: bytes) -> None:
        self.received = True
        framing = self.framing
        framing.feed(data)
        if framing.extra:  # bytes no request asked for (idle, or after the answer): the connection is not sane
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.pool.forget(self)
        if exc is None and self.framing.eof():
            return  # no length, no chunks: the body ended with the connection
        self._fail(Disconnected("the backend closed the connection" + (f" ({exc})" if exc else "")))

    # -- http1.Sink ------------------------------------------------------------------------------
    def on_head(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        resp = self.response
        if resp is None:
            return
        resp.status = status
        resp.headers = headers
        content_type = resp.header(b"content-type") or b""
        resp.content_type = content_type.split(b";", 1)[0].strip().lower().decode("latin-1")
        if self.headers_ready is not None and not self.headers_ready.done():
            self.headers_ready.set_result(None)

    def on_body(self, data: bytes) -> None:
        if self.response is not None:
            self.response._feed(data)

    def on_done(self) -> None:
        if self.transport is not None and self.transport.get_write_buffer_size():
            self.framing.keep_alive = False  # answered before the request was all out: its rest is in the way
        if not self.framing.keep_alive:
            self.pool.forget(self)  # "Connection: close" (cpp-httplib says so on its 100th answer), HTTP/1.0
            self.lost = True
        if self.response is not None:
            self.response._finish()

    def on_error(self, error: WireError) -> None:
        self._fail(error)
        self.close()

    # -- for the pool ----------------------------------------------------------------------------
    def start(self, response: Response, head: bytes, body: bytes) -> asyncio.Future[None]:
        assert self.transport is not None
        self.response = response
        self.received = False
        self.framing.expect()
        self.headers_ready = asyncio.get_running_loop().create_future()
        if len(body) < _SMALL_BODY:
            self.transport.write(head + body)
        else:
            self.transport.writelines((head, body))
        return self.headers_ready

    def finished(self, reusable: bool) -> None:
        self.response = None
        self.headers_ready = None
        if reusable and not self.lost and self.framing.reusable:
            self.framing.idle()
            self.resume()
            self.pool.put_idle(self)
        else:
            self.close()

    def pause(self) -> None:
        if not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.paused and self.transport is not None and not self.lost:
            self.paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        self.lost = True
        self.pool.forget(self)
        self.framing.abandon()
        transport = self.transport
        if transport is not None:
            if transport.get_write_buffer_size():
                transport.abort()  # a backend that stopped reading would keep the socket until it drained
            else:
                transport.close()

    def headers_late(self) -> None:
        if self.headers_ready is not None and not self.headers_ready.done():
            self.headers_ready.set_exception(TimeoutError())

    def _fail(self, error: WireError) -> None:
        if self.headers_ready is not None and not self.headers_ready.done():
            self.headers_ready.set_exception(error)
            self.headers_ready.exception()  # retrieved: no "never retrieved" warning when nobody awaits
        if self.response is not None:
            self.response._finish(error)


def late_heads() -> DueSweep[_Connection]:
    """Response heads overdue at `Pool.post`'s `headers_due` fail with TimeoutError, within 50 ms (one sweep
    per `Client`, see duesweep.py; `asyncio.timeout` per attempt was ~2% of the CPU at c=16)."""
    return DueSweep(0.05, _Connection.headers_late)


class Pool:
    """Keep-alive connections to one backend origin (`http://host:port`, `https://...`)."""

    def __init__(self, origin: str, connect_timeout: float = 5.0,
                 late: DueSweep[_Connection] | None = None) -> None:
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {origin!r}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.ssl = ssl.create_default_context() if parts.scheme == "https" else None
        self.base_path = parts.path.rstrip("/")
        self.host_header = parts.netloc.rsplit("@", 1)[-1].encode("idna")
        self.connect_timeout = connect_timeout
        self.idle: list[_Connection] = []
        self.open: set[_Connection] = set()
        self.connects = 0  # connections made: keep-alive at work shows as few
        self.late = late if late is not None else late_heads()

    async def post(self, path: str, body: bytes, headers: bytes = b"", read_timeout: float | None = None,
                   deadline: float | None = None, headers_due: float | None = None) -> Response:
        """POST `body` (JSON) to `path`; returns once the answer's headers are in, TimeoutError when they are
        not by `headers_due` (loop time; connecting included). `headers`: extra header lines, each ending in
        CRLF. `read_timeout`: the longest wait for a byte of the body (a stream's idle timeout); `deadline`
        (loop time): when the whole body must be in (a non-stream answer). A kept-alive connection the backend
        closed meanwhile is replaced once."""
        head = b"".join((b"POST ", (self.base_path + path).encode(), b" HTTP/1.1\r\nHost: ", self.host_header,
                         b"\r\nContent-Type: application/json\r\nContent-Length: ", str(len(body)).encode(),
                         b"\r\n", headers, b"\r\n"))
        conn = self._take_idle()
        if conn is not None:
            try:
                return await self._send(conn, head, body, read_timeout, deadline, headers_due)
            except Disconnected:
                if conn.received:
                    raise
                # closed while idle (its keep-alive timeout): nothing was processed, a new connection is safe
        return await self._send(await self._connect(headers_due), head, body, read_timeout, deadline, headers_due)

    async def _send(self, conn: _Connection, head: bytes, body: bytes, read_timeout: float | None,
                    deadline: float | None, headers_due: float | None) -> Response:
        response = Response(conn, read_timeout, deadline)
        if headers_due is not None:
            self.late.watch(conn, headers_due)
        try:
            await conn.start(response, head, body)
        except BaseException:  # failed, timed out or cancelled before the headers: the connection is spent
            conn.close()
            raise
        finally:
            if headers_due is not None:
                self.late.forget(conn)
        return response

    def put_idle(self, conn: _Connection) -> None:
        conn.idle_since = time.monotonic()
        self.idle.append(conn)

    def forget(self, conn: _Connection) -> None:
        self.open.discard(conn)
        if conn in self.idle:
            self.idle.remove(conn)

    def close(self) -> None:
        for conn in list(self.open):
            conn.close()

    def _take_idle(self) -> _Connection | None:
        now = time.monotonic()
        while self.idle:
            conn = self.idle.pop()  # the most recently used: the least likely to have timed out
            if not conn.lost and now - conn.idle_since < _IDLE_S:
                return conn
            conn.close()
        return None

    async def _connect(self, due: float | None = None) -> _Connection:
        loop = asyncio.get_running_loop()
        timeout = self.connect_timeout if due is None else min(self.connect_timeout, due - loop.time())
        async with asyncio.timeout(timeout):
            _, conn = await loop.create_connection(lambda: _Connection(self), self.host, self.port, ssl=self.ssl)
        self.open.add(conn)
        self.connects += 1
        return conn


class Client:
    """A `Pool` per backend origin."""

    def __init__(self, connect_timeout: float = 5.0) -> None:
        self.connect_timeout = connect_timeout
        self.pools: dict[str, Pool] = {}
        self.late = late_heads()

    def pool(self, origin: str) -> Pool:
        pool = self.pools.get(origin)
        if pool is None:
            # backends come and go (DNS discovery): forget the origins that hold no connection any more
            for gone in [o for o, p in self.pools.items() if not p.open]:
                del self.pools[gone]
            pool = self.pools[origin] = Pool(origin, self.connect_timeout, self.late)
        return pool

    async def close(self) -> None:
        for pool in self.pools.values():
            pool.close()
        self.pools.clear()
