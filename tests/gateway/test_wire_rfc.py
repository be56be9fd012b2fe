"""wire.py against h11 as the reference HTTP/1.1 parser (RFC 9112): generated and hostile answer byte
streams, split at random points, written by a tiny server on 127.0.0.1 to the real client.

The client must read what h11 reads (status, headers, body) and reuse a connection only when h11 says the
answer was complete, the connection persists and not one byte followed."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import h11
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vlgate.gateway.forward.http1 import MAX_FIELDS, MAX_HEAD_BYTES
from vlgate.gateway.forward.wire import Pool, WireError

SETTINGS = settings(max_examples=120, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

TOKEN = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-.^_`|~",
                min_size=1, max_size=12)
VCHAR = "".join(chr(c) for c in range(0x21, 0x7F))
FRAMED = {"content-length", "transfer-encoding", "connection", "keep-alive"}


@dataclass
class Outcome:
    answer: tuple[int, list[tuple[bytes, bytes]], bytes] | None  # None: an error
    reused: bool


# -- generated answers -----------------------------------------------------------------------------------
@st.composite
def field_value(draw: st.DrawFn) -> bytes:
    inner = draw(st.text(VCHAR + " \t", max_size=20)).strip(" \t")
    ows = draw(st.sampled_from(["", " ", "  ", "\t"]))
    return (draw(st.sampled_from(["", " "])) + inner + ows).encode()


@st.composite
def fields(draw: st.DrawFn) -> list[tuple[bytes, bytes]]:
    names = draw(st.lists(TOKEN.filter(lambda n: n.lower() not in FRAMED), max_size=6))
    return [(n.encode(), draw(field_value())) for n in names]


def head(version: bytes, status: int, reason: bytes, items: list[tuple[bytes, bytes]]) -> bytes:
    return b"HTTP/%s %d %s\r\n" % (version, status, reason) + b"".join(b"%s:%s\r\n" % kv for kv in items) + b"\r\n"


@st.composite
def interim(draw: st.DrawFn) -> bytes:
    status = draw(st.sampled_from([100, 102, 103, 104, 150, 199]))
    items = draw(fields())
    if status >= 104 and draw(st.booleans()):
        items.append((b"Content-Length", b"5"))  # a 1xx has no body whatever it says (RFC 9110 15.2)
    return head(b"1.1", status, b"Interim", items)


@st.composite
def chunked(draw: st.DrawFn, body: bytes) -> bytes:
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(body) - 1)), max_size=4))) if len(body) > 1 else []
    pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True) if body[a:b]]
    out = b""
    for piece in pieces:
        size = b"%x" % len(piece)
        size = size.upper() if draw(st.booleans()) else size
        ext = draw(st.sampled_from([b"", b";a=b", b";name", b';q="x y"']))
        out += size + ext + b"\r\n" + piece + b"\r\n"
    trailers = draw(st.lists(st.tuples(TOKEN.filter(lambda n: n.lower() not in FRAMED), st.just("t")), max_size=2))
    return out + b"0\r\n" + b"".join(b"%s: %s\r\n" % (n.encode(), v.encode()) for n, v in trailers) + b"\r\n"


@st.composite
def answer(draw: st.DrawFn) -> tuple[bytes, bool]:
    """One valid final answer, and whether it is delimited by the connection's close."""
    version = draw(st.sampled_from([b"1.1", b"1.1", b"1.1", b"1.0"]))
    status = draw(st.sampled_from([200, 200, 201, 204, 299, 304, 400, 404, 500, 503, 599]))
    reason = draw(st.sampled_from([b"OK", b"", b"Some Reason", b"x\tx"]))
    items = draw(fields())
    connection = draw(st.sampled_from([None, b"close", b"Close", b"keep-alive", b"foo, close"]))
    if connection is not None:
        items.insert(draw(st.integers(0, len(items))), (b"Connection", connection))
    body = draw(st.binary(max_size=300))
    framing = draw(st.sampled_from(["length", "chunked", "eof"] if version == b"1.1" else ["length", "eof"]))
    if status in (204, 304):
        framing, body = "none", b""
    if framing == "length":
        items.append((b"Content-Length", b"%d" % len(body)))
    elif framing == "chunked":
        items.append((b"Transfer-Encoding", b"chunked"))
        body = draw(chunked(body))
    return head(version, status, reason, items) + body, framing == "eof"


@st.composite
def script(draw: st.DrawFn, hostile: bool) -> tuple[bytes, list[int], bool]:
    """(the bytes, where to split them, whether the server closes after writing them)."""
    prefix = b"".join(draw(st.lists(interim(), max_size=3)))
    final, to_close = draw(answer())
    data = prefix + final
    if hostile:
        kind = draw(st.sampled_from(["garbage", "pipelined", "crlf", "truncate", "flip", "insert"]))
        if kind == "garbage":
            data += draw(st.binary(min_size=1, max_size=40))
        elif kind == "pipelined":
            data += draw(answer())[0]
        elif kind == "crlf":
            data += draw(st.sampled_from([b"\r\n", b"\n", b"\r\n\r\n", b"\r"]))
        elif kind == "truncate":
            data = data[: draw(st.integers(0, len(data) - 1))]
            to_close = True
        else:
            at = draw(st.integers(0, len(data) - 1))
            byte = bytes([draw(st.integers(0, 255))])
            data = data[:at] + byte + data[at + (kind == "flip"):]
    splits = sorted(draw(st.sets(st.integers(1, max(1, len(data) - 1)), max_size=6))) if len(data) > 1 else []
    return data, splits, to_close or draw(st.booleans())


# -- the reference ---------------------------------------------------------------------------------------
def reference(data: bytes, closes: bool) -> Outcome:
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD_BYTES)
    conn.send(h11.Request(method="POST", target="/x", headers=[("Host", "t"), ("Content-Length", "2")]))
    conn.send(h11.Data(data=b"{}"))
    conn.send(h11.EndOfMessage())
    conn.receive_data(data)
    if closes:
        conn.receive_data(b"")
    status, headers, body = 0, [], b""
    try:
        while True:
            event = conn.next_event()
            if isinstance(event, h11.Response):
                if len(event.headers) > MAX_FIELDS:
                    return Outcome(None, False)
                status, headers = event.status_code, list(event.headers)
            elif isinstance(event, h11.Data):
                body += bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                break
            elif not isinstance(event, h11.InformationalResponse):  # NEED_DATA, PAUSED, ConnectionClosed
                return Outcome(None, False)
    except h11.RemoteProtocolError:
        return Outcome(None, False)
    reused = not closes and conn.their_state is h11.DONE and not conn.trailing_data[0]
    return Outcome((status, headers, body), reused)


# -- the client ------------------------------------------------------------------------------------------
async def _read_request(reader: asyncio.StreamReader) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    await reader.readexactly(int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0]))


async def through_client(data: bytes, splits: list[int], closes: bool) -> Outcome:
    written = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await _read_request(reader)
            for a, b in zip([0, *splits], [*splits, len(data)], strict=True):
                writer.write(data[a:b])
                await writer.drain()
                await asyncio.sleep(0.001)  # each piece its own read on the other side
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            written.set()
            if closes:
                writer.close()
        await asyncio.sleep(10)  # hold the connection open: a pooled connection stays pooled

    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    pool = Pool(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
    loop = asyncio.get_running_loop()
    result = None
    try:
        async with asyncio.timeout(1.0):
            resp = await pool.post("/x", b"{}", deadline=loop.time() + 1.0)
        try:
            body = await resp.read()
            result = (resp.status, list(resp.headers), body)
        finally:
            resp.release()
    except (WireError, TimeoutError):
        pass
    await written.wait()
    for _ in range(5):  # what the server wrote last reaches the client
        await asyncio.sleep(0.002)
    reused = bool(pool.idle)
    pool.close()
    server.close()
    return Outcome(result, reused)


def run(data: bytes, splits: list[int], closes: bool) -> tuple[Outcome, Outcome]:
    expected = reference(data, closes)
    if expected.answer is None and not closes and reference(data, True).answer is not None:
        closes = True  # h11 waits for more: end it by closing rather than by the client's timeout
        expected = reference(data, closes)
    return expected, asyncio.run(through_client(data, splits, closes))


@SETTINGS
@given(script(hostile=False))
def test_valid_answers_read_as_h11_reads_them(case: tuple[bytes, list[int], bool]) -> None:
    expected, got = run(*case)
    assert expected.answer is not None
    assert got == expected


@SETTINGS
@given(script(hostile=True))
def test_hostile_answers_never_leave_a_dirty_connection_pooled(case: tuple[bytes, list[int], bool]) -> None:
    expected, got = run(*case)
    assert not got.reused or expected.reused  # reused only when h11 saw a whole answer and nothing after it
    if got.answer is not None and expected.answer is not None:
        assert got.answer == expected.answer
    if expected.answer is None and got.answer is not None:
        # h11 refuses a transfer coding it does not know; RFC 9112 6.3 reads such an answer to the close, which
        # the client does (never pooling it)
        codings = [v for k, v in got.answer[1] if k == b"transfer-encoding"]
        assert codings and codings[-1].rsplit(b",", 1)[-1].strip().lower() != b"chunked" and not got.reused, (
            "the client read an answer where h11 found none")


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"


@pytest.mark.parametrize(("data", "why"), [
    (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n" + OK, "101 without an upgrade request"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
     "Content-Length and Transfer-Encoding"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}", "two lengths"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n", "chunk size not hex"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"f" * 17 + b"\r\n{}", "chunk size overflow"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2 \r\n{}\r\n0\r\n\r\n", "space after chunk size"),
    (b"HTTP/1.1 200 OK\nContent-Length: 2\n\n{}", "bare LF"),
    (b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\nContent-Length: 2\r\n\r\n{}", "obs-fold"),
    (b"HTTP/2.0 200 OK\r\nContent-Length: 2\r\n\r\n{}", "not HTTP/1.x"),
    (b"HTTP/1.1 099 Low\r\nContent-Length: 2\r\n\r\n{}", "status below 100"),
    (b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(MAX_FIELDS + 1))
     + b"Content-Length: 2\r\n\r\n{}", "too many fields"),
    (b"HTTP/1.1 200 OK\r\nX: " + b"v" * MAX_HEAD_BYTES + b"\r\nContent-Length: 2\r\n\r\n{}", "head too large"),
    (b"HTTP/1.1 103 Hints\r\nLink: x\r\n\r\n" * (MAX_HEAD_BYTES // 30) + OK, "endless 1xx"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n"
     + b"".join(b"T-%d: v\r\n" % i for i in range(MAX_FIELDS + 1)) + b"\r\n", "too many trailer fields"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\nT: " + b"v" * (3 * MAX_HEAD_BYTES)
     + b"\r\n\r\n", "trailer too large"),
])
def test_answers_an_http_client_must_refuse(data: bytes, why: str) -> None:
    """RFC 9112 leaves these to the recipient's choice or calls them errors: a proxy errs, and drops the
    connection (h11 accepts some, e.g. both framings, which RFC 9112 6.3 calls likely smuggling)."""
    splits = list(range(1000, len(data), 1000))  # large ones arrive in pieces
    got = asyncio.run(through_client(data, splits, closes=False))
    assert got == Outcome(None, False), why


def test_an_answer_before_the_request_was_all_written_is_read_and_its_connection_closed() -> None:
    """A backend may answer early (RFC 9112 9.3, e.g. 413) while the body is still going out: the rest of the
    body would be read as the next request, so the connection is not reused."""

    async def scenario() -> tuple[int, bytes, bool]:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")  # the head only: the body is left unread
            writer.write(b"HTTP/1.1 413 Too Large\r\nContent-Length: 2\r\n\r\n{}")
            await writer.drain()
            await asyncio.sleep(2)

        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        pool = Pool(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
        resp = await pool.post("/x", b'"' + b"x" * (32 << 20) + b'"')  # more than the socket buffers take
        body = await resp.read()
        resp.release()
        reused = bool(pool.idle)
        pool.close()
        server.close()
        return resp.status, body, reused

    assert asyncio.run(scenario()) == (413, b"{}", False)
