"""Canary: every private API of another package vlgate relies on, imported and exercised here, so an
upgrade that changes one fails this file by name (pyproject.toml caps those packages below the next
version not yet checked: raise a cap when this file passes on the new version).

- uvicorn: `HttpToolsProtocol` subclassed by the front door (gateway/frontdoor/protocol.py), with the
  hooks and attributes it overrides or reads; `Server.handle_exit` and `Server._captured_signals`
  (gateway/frontdoor/drain.py).
- Pillow: `Image._getdecoder("zip")` fed by hand and a PNG's `tile` layout (images/png.py),
  `Image.core.set_blocks_max` / `get_block_size` (images/decode.py), `Image.Image()._new` and `_mode`
  (images/resample.py's RGBX-as-RGB view).
"""

from __future__ import annotations

import asyncio
import io
import zlib
from typing import Any

import pytest
from PIL import Image


def need(ok: object, what: str, where: str) -> None:
    if not ok:
        pytest.fail(f"private API changed: {what} (used by {where}); see tests/test_private_apis.py", pytrace=False)


# ---------------------------------------------------------------- uvicorn

def test_uvicorn_httptools_protocol() -> None:
    where = "vlgate/gateway/frontdoor/protocol.py"
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
        from uvicorn.server import ServerState
    except ImportError as exc:
        pytest.fail(f"private API changed: uvicorn.protocols.http.httptools_impl.HttpToolsProtocol ({exc}); "
                    f"used by {where}", pytrace=False)
    import uvicorn

    for hook in ("connection_made", "connection_lost", "send_400_response", "on_message_begin", "on_url",
                 "on_header", "on_headers_complete"):
        need(callable(getattr(HttpToolsProtocol, hook, None)), f"HttpToolsProtocol.{hook}", where)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        pass

    config = uvicorn.Config(app, http=HttpToolsProtocol, log_config=None)
    config.load()
    loop = asyncio.new_event_loop()  # the protocol takes the current loop; earlier tests may have closed theirs
    try:
        proto = HttpToolsProtocol(config, ServerState(), {}, _loop=loop)
    except TypeError as exc:
        pytest.fail(f"private API changed: HttpToolsProtocol(config, server_state, app_state, _loop) ({exc}); "
                    f"used by {where} through uvicorn.Config(http=...)", pytrace=False)
    finally:
        loop.close()
    need(hasattr(proto, "app"), "HttpToolsProtocol instance attribute `app` (swapped for a Host refusal)", where)
    need(hasattr(proto, "transport"), "HttpToolsProtocol instance attribute `transport`", where)
    need(config.http_protocol_class is HttpToolsProtocol, "uvicorn.Config(http=<protocol class>)", where)


def test_uvicorn_server_signals() -> None:
    import uvicorn

    where = "vlgate/gateway/frontdoor/drain.py"
    need(callable(getattr(uvicorn.Server, "handle_exit", None)), "uvicorn.Server.handle_exit(sig, frame)", where)
    server = uvicorn.Server(uvicorn.Config(lambda *a: None, log_config=None))
    need(isinstance(getattr(server, "_captured_signals", None), list), "uvicorn.Server._captured_signals (a list)",
         where)


def test_uvicorn_takes_our_settings() -> None:
    """The settings server.py passes exist (a renamed one would be a TypeError at startup)."""
    import uvicorn

    config = uvicorn.Config(lambda *a: None, loop="uvloop", ws="none", access_log=False, log_config=None,
                            log_level="warning", timeout_graceful_shutdown=1, lifespan="on", backlog=16,
                            proxy_headers=False)
    need(config.loop == "uvloop", "uvicorn.Config(loop='uvloop')", "vlgate/gateway/server.py")


# ---------------------------------------------------------------- Pillow

def _png(im: Image.Image) -> Image.Image:
    buf = io.BytesIO()
    im.save(buf, "PNG", compress_level=1)
    return Image.open(io.BytesIO(buf.getvalue()))


def test_pillow_png_tile_and_zip_decoder() -> None:
    where = "vlgate/images/png.py"
    src = Image.linear_gradient("L").resize((64, 32)).convert("RGB")
    im = _png(src)
    tile = getattr(im, "tile", None)
    need(tile is not None and len(tile) == 1, "PngImageFile.tile: one tile", where)
    assert tile is not None
    need(tile[0][0] == "zip" and tuple(tile[0][1]) == (0, 0, 64, 32) and tile[0][3] == "RGB",
         f"PngImageFile.tile[0] as (codec 'zip', box, offset, rawmode): got {tile[0]!r}", where)
    decoder_of = getattr(Image, "_getdecoder", None)
    need(callable(decoder_of), "PIL.Image._getdecoder", where)
    assert decoder_of is not None
    decoder = decoder_of("RGB", "zip", "RGB")
    for method in ("setimage", "decode", "cleanup"):
        need(callable(getattr(decoder, method, None)), f"the zip decoder's .{method}()", where)
    out = Image.new("RGB", (64, 32))
    decoder.setimage(out.im, (0, 0, 64, 32))
    rows = b"".join(b"\x00" + src.crop((0, y, 64, y + 1)).tobytes() for y in range(32))  # filter 0 per row
    consumed, err = decoder.decode(zlib.compress(rows))
    decoder.cleanup()
    need(isinstance(consumed, int) and isinstance(err, int), "decoder.decode(bytes) -> (consumed, error)", where)
    need(out.tobytes() == src.tobytes(), "the zip decoder filling the image given to setimage()", where)


def test_pillow_block_allocator() -> None:
    core = Image.core
    for name in ("set_blocks_max", "get_block_size"):
        need(callable(getattr(core, name, None)), f"PIL.Image.core.{name}", "vlgate/images/decode.py")


def test_pillow_image_view_with_another_mode() -> None:
    where = "vlgate/images/resample.py (_as_rgb)"
    rgbx = Image.new("RGBX", (4, 2), (1, 2, 3, 0))
    try:
        view = Image.Image()._new(rgbx.im)
        view._mode = "RGB"
    except (AttributeError, TypeError) as exc:
        pytest.fail(f"private API changed: Image.Image()._new(core image) / ._mode ({exc}); used by {where}",
                    pytrace=False)
    need(view.mode == "RGB" and view.size == (4, 2), "Image._mode setting Image.mode", where)
    need(view.getpixel((0, 0))[:3] == (1, 2, 3), "an RGB view reading RGBX's bytes", where)
