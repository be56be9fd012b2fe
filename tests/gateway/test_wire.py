"""The gateway's backend client (gateway/wire.py): keep-alive against a real llama-server, and the
connection faults only a scripted raw server can show on demand."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import ClassVar

import orjson
import pytest

from vlgate.gateway.forward import wire
from vlgate.gateway.forward.wire import BadResponse, Client, Disconnected, Pool

CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def test_keep_alive_past_cpp_httplibs_hundred_requests_per_connection(llama_server) -> None:
    """cpp-httplib answers `Connection: close` on a connection's 100th request: the pool opens a new one."""
    server = llama_server(slots=1)

    async def scenario() -> tuple[int, list[int]]:
        pool = Pool(server.url)
        statuses = []
        for _ in range(120):
            resp = await pool.post("/v1/chat/completions", orjson.dumps(CHAT))
            body = orjson.loads(await resp.read())
            resp.release()
            statuses.append(resp.status)
            assert body["object"] == "chat.completion"
        pool.close()
        return pool.connects, statuses

    connects, statuses = asyncio.run(scenario())
    assert statuses == [200] * 120
    assert connects == 2


def test_a_stream_arrives_in_pieces_and_ends(llama_server) -> None:
    server = llama_server(slots=1)

    async def scenario() -> tuple[str, list[bytes]]:
        pool = Pool(server.url)
        resp = await pool.post("/v1/chat/completions", orjson.dumps({**CHAT, "max_tokens": 8, "stream": True}))
        pieces = []
        while chunk := await resp.readany():
            pieces.append(chunk)
        resp.release()
        assert pool.idle  # complete: the connection waits for the next request
        pool.close()
        return resp.content_type, pieces

    content_type, pieces = asyncio.run(scenario())
    assert content_type == "text/event-stream"
    text = b"".join(pieces).decode()
    assert text.count("data: ") >= 9 and text.rstrip().endswith("data: [DONE]")


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


async def _serve(handler: Handler) -> tuple[asyncio.Server, str]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}"


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    return head + await reader.readexactly(length)


def test_a_connection_closed_while_idle_is_replaced_without_an_error() -> None:
    """A backend that drops idle connections without saying so (no `Connection: close`)."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(OK)
        await writer.drain()
        writer.close()

    async def scenario() -> tuple[list[int], int]:
        server, url = await _serve(handler)
        pool = Pool(url)
        statuses = []
        for _ in range(3):
            resp = await pool.post("/x", b"{}")
            await resp.read()
            resp.release()
            statuses.append(resp.status)
            await asyncio.sleep(0.05)  # the close arrives while the connection is idle... or not yet
        pool.close()
        server.close()
        return statuses, pool.connects

    statuses, connects = asyncio.run(scenario())
    assert statuses == [200, 200, 200]
    assert connects == 3


@pytest.mark.parametrize(("answer", "error"), [
    (b"SMTP ready\r\n\r\n", BadResponse),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"cut", Disconnected),
])
def test_broken_answers_raise_wire_errors(answer: bytes, error: type[Exception]) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(answer)
        await writer.drain()
        writer.close()

    async def scenario() -> None:
        server, url = await _serve(handler)
        pool = Pool(url)
        try:
            with pytest.raises(error):
                resp = await pool.post("/x", b"{}")
                await resp.read()
        finally:
            pool.close()
            server.close()
        assert not pool.open  # a broken connection is never reused

    asyncio.run(scenario())


def test_a_stalled_stream_times_out_and_the_connection_is_dropped() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"6\r\ndata: \r\n")
        await writer.drain()
        await asyncio.sleep(5)
        writer.close()

    async def scenario() -> None:
        server, url = await _serve(handler)
        pool = Pool(url)
        resp = await pool.post("/x", b"{}", read_timeout=0.3)
        assert await resp.readany() == b"data: "
        with pytest.raises(TimeoutError):
            await resp.readany()
        resp.close()
        assert not pool.open and not pool.idle
        server.close()

    asyncio.run(scenario())


def test_request_bytes_carry_the_body_and_extra_headers() -> None:
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while not reader.at_eof():  # keep-alive: the second request comes on the same connection
            seen.append(await _read_request(reader))
            writer.write(OK)
            await writer.drain()

    async def scenario() -> None:
        server, url = await _serve(handler)
        pool = Pool(url + "/base/")
        big = b'{"x":"' + b"a" * 200_000 + b'"}'  # past one write: head and body go out separately
        for body in (b'{"a":1}', big):
            resp = await pool.post("/v1/chat/completions", body, b"Authorization: Bearer k\r\n")
            assert await resp.read() == b"{}"
            resp.release()
        assert pool.connects == 1
        pool.close()
        server.close()

    asyncio.run(scenario())
    small, big = seen
    assert small.startswith(b"POST /base/v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:")
    assert b"\r\nAuthorization: Bearer k\r\n" in small and small.endswith(b'\r\n\r\n{"a":1}')
    assert big.endswith(b"a" * 1000 + b'"}') and len(big) > 200_000


def test_origins_without_connections_are_forgotten() -> None:
    """DNS discovery brings and removes addresses: the client keeps pools only for origins it still talks to."""
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while not reader.at_eof():
            await _read_request(reader)
            writer.write(OK)
            await writer.drain()

    async def scenario() -> tuple[str, list[str]]:
        server, url = await _serve(handler)
        client = Client()
        resp = await client.pool(url).post("/x", b"{}")
        await resp.read()
        resp.release()  # kept alive: this origin stays
        client.pool("http://127.0.0.1:1")  # a new origin, never connected
        client.pool("http://127.0.0.1:2")  # ... forgotten when the next one comes
        pools = sorted(client.pools)
        await client.close()
        server.close()
        return url, pools

    url, pools = asyncio.run(scenario())
    assert pools == sorted([url, "http://127.0.0.1:2"])


def test_a_body_that_stalls_halfway_ends_at_the_deadline() -> None:
    """A non-stream answer is bounded as a whole: headers and half a body, then silence, is a TimeoutError."""
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"half")
        await writer.drain()
        await asyncio.sleep(5)

    async def scenario() -> float:
        server, url = await _serve(handler)
        pool = Pool(url)
        loop = asyncio.get_running_loop()
        started = loop.time()
        resp = await pool.post("/x", b"{}", deadline=started + 0.3)
        with pytest.raises(TimeoutError):
            await resp.read()
        resp.close()
        assert not pool.open and not pool.idle
        server.close()
        return loop.time() - started

    assert 0.25 < asyncio.run(scenario()) < 1.5


def test_a_body_past_the_pause_threshold_is_read_whole() -> None:
    """read() takes the body whole: reading never pauses for it (it waited forever past 1 MiB)."""
    big = b'"' + b"a" * (3 << 20) + b'"'

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(big) + big)
        await writer.drain()
        await asyncio.sleep(2)

    async def scenario() -> bytes:
        server, url = await _serve(handler)
        pool = Pool(url)
        resp = await pool.post("/x", b"{}")
        async with asyncio.timeout(5):
            body = await resp.read()
        resp.release()
        assert pool.idle
        pool.close()
        server.close()
        return body

    assert asyncio.run(scenario()) == big


def test_a_whole_answer_past_the_bound_is_refused_not_buffered(monkeypatch: pytest.MonkeyPatch) -> None:
    """A backend that sends an endless (or huge) non-stream body: refused at MAX_ANSWER_BYTES, never pooled."""
    monkeypatch.setattr(wire, "MAX_ANSWER_BYTES", 1 << 20)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (64 << 20))
        for _ in range(64):
            writer.write(b"a" * (1 << 20))
            await writer.drain()

    async def scenario() -> None:
        server, url = await _serve(handler)
        pool = Pool(url)
        resp = await pool.post("/x", b"{}")
        with pytest.raises(BadResponse, match="non-stream answer past"):
            async with asyncio.timeout(5):
                await resp.read()
        resp.close()
        assert not pool.idle
        pool.close()
        server.close()

    asyncio.run(scenario())


def test_hop_by_hop_headers_are_not_passed_on() -> None:
    """RFC 9110 section 7.6.1: Connection, the fields it names, and the other hop-by-hop fields stay here."""
    from vlgate.gateway.forward.forwarder import Upstream

    class FakeResponse:
        headers: ClassVar = [(b"content-type", b"application/json"), (b"connection", b"keep-alive, x-secret"),
                             (b"x-secret", b"1"), (b"keep-alive", b"timeout=5"), (b"upgrade", b"h2c"),
                             (b"x-kept", b"2")]

    upstream = Upstream.__new__(Upstream)
    upstream.response = FakeResponse()  # type: ignore[assignment]  # only .headers is read
    assert upstream.headers() == [(b"content-type", b"application/json"), (b"x-kept", b"2")]
