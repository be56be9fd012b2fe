"""Helpers for the image tests (no tests here): image makers, a normalizer runner, local servers."""

from __future__ import annotations

import asyncio
import base64
import io
import socket
import struct
import threading
import zlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from PIL import Image

from vlgate.gateway.apis.openai.errors import error_object
from vlgate.images import ImageError, ImageInfo, ImageNormalizer, ImageSettings

T = TypeVar("T")


def run(coro: Awaitable[T]) -> T:
    return asyncio.run(coro)  # type: ignore[arg-type]


def encode(img: Image.Image, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def body_with(*urls: str, string_form: bool = False) -> dict[str, Any]:
    parts: list[dict[str, Any]] = []
    for u in urls:
        parts.append({"type": "image_url", "image_url": u if string_form else {"url": u, "detail": "high"}})
    parts.append({"type": "text", "text": "describe"})
    return {"model": "youtu-vl", "messages": [{"role": "system", "content": "You are a helpful assistant."},
                                              {"role": "user", "content": parts}]}


def settings(**sections: dict[str, Any] | Any) -> ImageSettings:
    return ImageSettings.model_validate(sections)


def normalize(
    data: bytes | str, s: ImageSettings | None = None, mime: str = "image/png"
) -> tuple[Image.Image, ImageInfo, str]:
    """Run one image through a fresh normalizer; returns (decoded output, info, output mime)."""
    url = data if isinstance(data, str) else data_url(data, mime)
    out, infos = run(_normalize_one(url, s or settings()))
    header, payload = out.split(",", 1)
    img = Image.open(io.BytesIO(base64.b64decode(payload)))
    img.load()
    return img, infos[0], header[5:].split(";")[0]


async def _normalize_one(url: str, s: ImageSettings) -> tuple[str, list[ImageInfo]]:
    n = ImageNormalizer(s)
    try:
        body = body_with(url)
        infos = await n.normalize_body(body)
        return body["messages"][1]["content"][0]["image_url"]["url"], infos
    finally:
        await n.aclose()


def error_of(data: bytes | str, s: ImageSettings | None = None, mime: str = "image/png") -> ImageError:
    try:
        normalize(data, s, mime)
    except ImageError as e:
        assert e.status == 400
        assert error_object(e)["error"]["type"] == "invalid_request_error"
        return e
    raise AssertionError("expected ImageError")


def png_raw(
    width: int, height: int, color_type: int, bit_depth: int, rows: bytes | None, *, truncate_idat: bool = False
) -> bytes:
    """A PNG written by hand (16-bit RGB, or a header that lies about its size)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    idat = zlib.compress(rows or b"\x00" * 64)
    if truncate_idat:
        idat = idat[:8]
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def quadrants(width: int, height: int, colors: tuple[tuple[int, int, int], ...]) -> Image.Image:
    """TL, TR, BL, BR blocks of flat colour: orientation is visible and survives JPEG."""
    img = Image.new("RGB", (width, height))
    w2, h2 = width // 2, height // 2
    for (x, y), c in zip(((0, 0), (w2, 0), (0, h2), (w2, h2)), colors, strict=True):
        img.paste(c, (x, y, x + (width - w2 if x else w2), y + (height - h2 if y else h2)))
    return img


def close(a: tuple[int, ...], b: tuple[int, ...], tol: int) -> bool:
    return all(abs(int(x) - int(y)) <= tol for x, y in zip(a, b, strict=False))


class CountingListener:
    """A TCP listener that counts accepted connections and answers each with a valid PNG over HTTP.

    If an SSRF rule failed, the fetch would succeed (and the count would be > 0): both are asserted."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._png = encode(Image.new("RGB", (40, 40), (1, 2, 3)), "PNG")
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.05)
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.accepted += 1
            with conn:
                try:
                    conn.settimeout(1)
                    conn.recv(65536)
                    head = (f"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: {len(self._png)}\r\n"
                            "Connection: close\r\n\r\n")
                    conn.sendall(head.encode() + self._png)
                except OSError:
                    pass

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        self.sock.close()


async def max_loop_gap(work: Callable[[], Awaitable[T]]) -> tuple[T, float, float]:
    """Run `work` while a ticker measures the longest stall of the event loop; returns (result, gap_s, total_s)."""
    loop = asyncio.get_running_loop()
    gaps: list[float] = []
    last = [loop.time()]
    done = False

    async def ticker() -> None:
        while not done:
            await asyncio.sleep(0.002)
            now = loop.time()
            gaps.append(now - last[0])
            last[0] = now

    t = asyncio.ensure_future(ticker())
    start = loop.time()
    try:
        result = await work()
    finally:
        done = True
        gaps.append(loop.time() - last[0])  # a loop blocked until the end never ticked at all
        await t
    return result, max(gaps), loop.time() - start
