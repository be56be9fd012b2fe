"""The libdeflate PNG path (images/png.py): Pillow's pixels exactly, and Pillow itself for everything it declines."""

from __future__ import annotations

import io
import struct
import zlib
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from support.images import encode, normalize, settings
from vlgate.images import png
from vlgate.images.types import ImageError

LOSSLESS = settings(encode={"format": "png"})  # output PNG: the pixels must come through unchanged


def noisy(mode: str, w: int = 301, h: int = 207, seed: int = 0) -> Image.Image:
    """Flat areas (long matches), noise (literals) and odd sizes: every PNG filter and deflate block type."""
    rng = np.random.default_rng(seed)
    bands = len(mode)
    arr = rng.integers(0, 256, (h, w, bands), dtype=np.uint8)
    arr[: h // 2, : w // 2] = 200
    arr[h // 2 :, ::3] = arr[h // 2 :, :1]
    return Image.fromarray(arr[:, :, 0] if bands == 1 else arr, mode)


def pillow(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


def fast(data: bytes) -> Image.Image | None:
    return png.decode(Image.open(io.BytesIO(data)), data)


def chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def handmade(w: int, h: int, color_type: int, depth: int, raw: bytes, *, interlace: int = 0, idat_size: int = 0,
             extra: bytes = b"") -> bytes:
    """A PNG from filtered scanlines; `idat_size` splits the stream into IDAT chunks of that size."""
    stream = zlib.compress(raw + extra)
    size = idat_size or len(stream)
    idats = b"".join(chunk(b"IDAT", stream[i : i + size]) for i in range(0, len(stream), size))
    ihdr = struct.pack(">IIBBBBB", w, h, depth, color_type, 0, 0, interlace)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + idats + chunk(b"IEND", b"")


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA"])
@pytest.mark.parametrize("level", [0, 1, 9])
def test_same_pixels_as_pillow(mode: str, level: int) -> None:
    data = encode(noisy(mode), "PNG", compress_level=level)
    out = fast(data)
    assert out is not None and out.mode == mode and out.size == (301, 207)
    assert out.tobytes() == pillow(data).tobytes()


@pytest.mark.parametrize("size", [(1, 1), (1, 50), (50, 1), (4000, 3)])
def test_edge_sizes(size: tuple[int, int]) -> None:
    data = encode(noisy("RGB", *size), "PNG")
    out = fast(data)
    assert out is not None and out.tobytes() == pillow(data).tobytes()


def test_many_small_idat_chunks_and_a_colour_key() -> None:
    im = noisy("RGB", 64, 40)
    raw = b"".join(b"\x00" + im.tobytes()[y * 64 * 3 : (y + 1) * 64 * 3] for y in range(40))
    data = handmade(64, 40, 2, 8, raw, idat_size=100)
    trns = chunk(b"tRNS", struct.pack(">HHH", 200, 200, 200))
    data = data[:33] + trns + data[33:]  # after IHDR
    out = fast(data)
    assert out is not None and out.tobytes() == im.tobytes()
    assert out.info["transparency"] == (200, 200, 200)  # the colour key still reaches color.to_resizable
    lossless, _, _ = normalize(data, LOSSLESS)
    assert lossless.convert("RGB").getpixel((0, 0)) == (255, 255, 255)  # keyed pixels: over white


def declined() -> dict[str, bytes]:
    rgb = noisy("RGB", 16, 16)
    frames = [rgb, noisy("RGB", 16, 16, seed=1)]
    apng = io.BytesIO()
    frames[0].save(apng, "PNG", save_all=True, append_images=frames[1:])
    raw16 = b"".join(b"\x00" + bytes(16 * 6) for _ in range(16))
    adam7 = b"\x00" + rgb.tobytes()[:3]  # 1x1 interlaced: pass 1 holds the one pixel
    return {
        "palette": encode(rgb.convert("P"), "PNG"),
        "1-bit": encode(rgb.convert("1"), "PNG"),
        "16-bit": handmade(16, 16, 2, 16, raw16),
        "interlaced": handmade(1, 1, 2, 8, adam7, interlace=1),
        "APNG": apng.getvalue(),
        "extra rows": handmade(2, 2, 0, 8, b"\x00ab\x00cd", extra=b"\x00ef" * 10),
        "short stream": handmade(2, 2, 0, 8, b"\x00ab"),
    }


def corrupt() -> bytes:
    data = bytearray(encode(noisy("RGB", 64, 64), "PNG"))
    start = data.index(b"IDAT") + 4
    data[start + 20 : start + 40] = b"\xff" * 20
    return bytes(data)


def outcome(data: bytes) -> tuple[str, bytes]:
    try:
        out, _, mime = normalize(data, LOSSLESS)
    except ImageError as e:
        return "error", e.message.encode()
    return mime, out.convert("RGB").tobytes()


@pytest.mark.parametrize("case", [*declined(), "corrupt"])
def test_declined_cases_end_as_without_the_fast_path(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    data = corrupt() if case == "corrupt" else declined()[case]
    assert fast(data) is None
    with_fast_path = outcome(data)
    monkeypatch.setattr(png, "decode", lambda im, data: None)
    assert with_fast_path == outcome(data)  # Pillow decides, and words any error, exactly as before


def test_pipeline_uses_it(monkeypatch: pytest.MonkeyPatch) -> None:
    taken: list[bool] = []
    real = png.decode

    def spy(im: Image.Image, data: bytes) -> Image.Image | None:
        out = real(im, data)
        taken.append(out is not None)
        return out

    monkeypatch.setattr(png, "decode", spy)
    src = noisy("RGB", 640, 416)  # already on the grid: lossless output == decoded input
    out, _, _ = normalize(encode(src, "PNG"), LOSSLESS)
    assert taken == [True]
    assert out.convert("RGB").tobytes() == src.tobytes()


def test_exif_after_the_pixels_still_rotates() -> None:
    """eXIf may follow IDAT: then Pillow must read the whole file to find it (the slow path, taken only then)."""
    stored = Image.new("RGB", (40, 20), (255, 255, 255))
    stored.paste((255, 0, 0), (0, 0, 20, 20))  # red on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # upright = stored rotated 90 degrees clockwise: red on top
    data = encode(stored, "PNG", exif=exif)
    start = data.index(b"eXIf") - 4
    length = struct.unpack(">I", data[start : start + 4])[0]
    exif_chunk = data[start : start + 12 + length]
    data = data[:start] + data[start + 12 + length :]
    data = data[:-12] + exif_chunk + data[-12:]  # before IEND
    assert "exif" not in Image.open(io.BytesIO(data)).info  # Pillow has not seen it at open
    out, info, _ = normalize(data, LOSSLESS)
    assert (info.orig_width, info.orig_height) == (20, 40)
    assert out.getpixel((10, 5)) == (255, 0, 0) and min(out.getpixel((10, 35))) > 240  # red on top, white below


def test_a_pillow_without_the_internal_decoder_api_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    src = noisy("RGB", 640, 416)  # on the grid: not resized
    monkeypatch.setattr(png, "Image", SimpleNamespace(new=Image.new))  # no Image._getdecoder
    assert fast(encode(src, "PNG")) is None
    out, _, _ = normalize(encode(src, "PNG"), LOSSLESS)
    assert out.convert("RGB").tobytes() == src.tobytes()
