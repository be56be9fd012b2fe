"""URL fetching from a local server (private networks allowed for these tests only): limits while streaming."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from PIL import Image

from support.images import body_with, encode, settings
from vlgate.images import ImageError, ImageInfo, ImageNormalizer

PNG = encode(Image.new("RGB", (100, 60), (10, 200, 30)), "PNG")
MiB = 1024 * 1024


class ImageServer:
    """An aiohttp app with the routes the tests need; counts what it sent."""

    def __init__(self) -> None:
        self.sent = 0
        self.requests = 0
        app = web.Application()
        app.router.add_get("/img.png", self.img)
        app.router.add_get("/hop/{n}", self.hop)
        app.router.add_get("/slow", self.slow)
        app.router.add_get("/big", self.big)
        app.router.add_get("/declared", self.declared)
        app.router.add_get("/missing", self.missing)
        self.runner = web.AppRunner(app, shutdown_timeout=0.2)
        self.port = 0

    async def __aenter__(self) -> ImageServer:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.runner.cleanup()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def img(self, req: web.Request) -> web.Response:
        self.requests += 1
        return web.Response(body=PNG, content_type="text/html")  # a lying Content-Type: the bytes decide

    async def hop(self, req: web.Request) -> web.Response:
        self.requests += 1
        n = int(req.match_info["n"])
        raise web.HTTPFound("/img.png" if n == 0 else f"/hop/{n - 1}")

    async def slow(self, req: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(req)
        await resp.write(PNG[:20])
        await asyncio.sleep(30)
        return resp

    async def big(self, req: web.Request) -> web.StreamResponse:
        """50 MB with no Content-Length: only a limit enforced while streaming can stop it."""
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(req)
        chunk = PNG + b"\x00" * (256 * 1024 - len(PNG))
        try:
            while self.sent < 50 * MiB:
                await resp.write(chunk)
                self.sent += len(chunk)
        except (ConnectionError, asyncio.CancelledError):
            pass
        return resp

    async def declared(self, req: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Length": str(50 * MiB)})
        await resp.prepare(req)
        await resp.write(PNG)
        self.sent += len(PNG)
        await asyncio.sleep(5)
        return resp

    async def missing(self, req: web.Request) -> web.Response:
        return web.Response(status=404, text="nope")


def _run(fn: Callable[[ImageServer, ImageNormalizer], Awaitable[Any]], **sections: Any) -> Any:
    sections.setdefault("fetch", {})
    sections["fetch"] = {"allow_private_networks": True, **sections["fetch"]}

    async def go() -> Any:
        async with ImageServer() as srv:
            n = ImageNormalizer(settings(**sections))
            try:
                return await fn(srv, n)
            finally:
                await n.aclose()

    return asyncio.run(go())


async def _err(n: ImageNormalizer, *urls: str) -> ImageError:
    try:
        await n.normalize_body(body_with(*urls))
    except ImageError as e:
        return e
    raise AssertionError("expected ImageError")


def test_fetch_and_redirects_within_limit() -> None:
    async def go(srv: ImageServer, n: ImageNormalizer) -> tuple[list[ImageInfo], dict]:
        body = body_with(srv.url("/img.png"), srv.url("/hop/2"))
        infos = await n.normalize_body(body)
        return infos, body

    infos, body = _run(go)
    assert [(i.orig_width, i.orig_height, i.width, i.height) for i in infos] == [(100, 60, 128, 64)] * 2
    for part in body["messages"][1]["content"][:2]:
        assert part["image_url"]["url"].startswith("data:image/")
        assert part["image_url"]["detail"] == "high"


def test_too_many_redirects() -> None:
    async def go(srv: ImageServer, n: ImageNormalizer) -> tuple[ImageError, int]:
        e = await _err(n, srv.url("/hop/3"))  # 4 redirects
        return e, srv.requests

    e, requests = _run(go)
    assert "too many redirects" in e.message
    assert requests == 4  # the first request + 3 followed redirects, then stop
    e, _ = _run(go, fetch={"max_redirects": 0})
    assert "too many redirects" in e.message


def test_slow_server_times_out() -> None:
    async def go(srv: ImageServer, n: ImageNormalizer) -> tuple[ImageError, float]:
        t = time.monotonic()
        e = await _err(n, srv.url("/slow"))
        return e, time.monotonic() - t

    e, elapsed = _run(go, fetch={"timeout_s": 0.5})
    assert "timed out" in e.message and e.code == "image_fetch_timeout"
    assert 0.4 < elapsed < 3


def test_streamed_body_cut_at_the_byte_limit() -> None:
    async def go(srv: ImageServer, n: ImageNormalizer) -> tuple[ImageError, float]:
        t = time.monotonic()
        e = await _err(n, srv.url("/big"))
        elapsed = time.monotonic() - t
        await asyncio.sleep(0.2)  # let the server notice the closed connection
        return e, elapsed, srv.sent

    e, elapsed, sent = _run(go, limits={"max_image_bytes": 1 * MiB})
    assert "1.0 MB limit per image" in e.message and e.code == "image_too_large"
    assert sent < 20 * MiB  # cut early: the rest of the 50 MB was never sent (kernel buffers hold a few MB)
    assert elapsed < 3


def test_declared_length_refused_before_reading() -> None:
    async def go(srv: ImageServer, n: ImageNormalizer) -> tuple[ImageError, float]:
        t = time.monotonic()
        e = await _err(n, srv.url("/declared"))
        return e, time.monotonic() - t

    e, elapsed = _run(go)
    assert "10.0 MB limit per image" in e.message
    assert elapsed < 2  # no waiting for the (slow) body


def test_request_byte_limit_across_images_and_http_errors() -> None:
    async def go(srv: ImageServer, n: ImageNormalizer) -> tuple[ImageError, ImageError]:
        over = await _err(n, srv.url("/img.png"), srv.url("/img.png?b"), srv.url("/img.png?c"))
        missing = await _err(n, srv.url("/missing"))
        return over, missing

    over, missing = _run(go, limits={"max_request_bytes": 2 * len(PNG) + 10})
    assert "limit per request" in over.message
    assert over.param in {f"messages[1].content[{i}].image_url" for i in range(3)}
    assert "HTTP 404" in missing.message
