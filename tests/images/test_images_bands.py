"""Big lossless images in bands on several cores (images/split.py, png.py, bands.py): the same bytes out as
one thread doing it whole, errors worded as before, and a busy pool never waits on an unstarted band."""

from __future__ import annotations

import io
import struct
import threading
import zlib

import numpy as np
import pytest
from PIL import Image

from support.images import encode, normalize, settings
from vlgate.images import bands, png, resample, split
from vlgate.images.types import ImageError

TGA = settings(encode={"format": "tga"})


def ui(w: int, h: int, seed: int = 0) -> Image.Image:
    """Flat panels, gradients and noisy blocks: Pillow's encoder picks None/Sub/Up/Paeth rows."""
    rng = np.random.default_rng(seed)
    arr = np.empty((h, w, 3), np.uint8)
    arr[:] = np.linspace(40, 220, w, dtype=np.float32).astype(np.uint8)[None, :, None]
    for _ in range(40):
        x, y = int(rng.integers(0, w - 64)), int(rng.integers(0, h - 64))
        arr[y : y + 64, x : x + 64] = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    arr[h // 3 : h // 3 + 40] = 255
    return Image.fromarray(arr)


def cores(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    monkeypatch.setattr(split, "cpus", lambda: n)


def filtered_rows(data: bytes) -> tuple[bytes, int]:
    im = Image.open(io.BytesIO(data))
    raw = zlib.decompress(png._idat(data) or b"")
    return raw, 1 + im.width * len(im.mode)


@pytest.mark.parametrize("n", [2, 3, 4])
def test_png_bands_give_pillows_pixels(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    cores(monkeypatch, n)
    data = encode(ui(2800, 2000), "PNG")
    raw, stride = filtered_rows(data)
    assert len(png._bands(raw, 2000, stride)) == n  # cut where a None/Sub row starts
    for y0, _ in png._bands(raw, 2000, stride):
        assert y0 == 0 or raw[y0 * stride] <= 1
    out = png.decode(Image.open(io.BytesIO(data)), data)
    ref = Image.open(io.BytesIO(data))
    ref.load()
    assert out is not None and out.tobytes() == ref.tobytes()


def test_png_without_a_row_that_stands_alone_is_one_band(monkeypatch: pytest.MonkeyPatch) -> None:
    cores(monkeypatch, 4)
    w, h = 1600, 1200
    pixels = ui(w, h).tobytes()
    raw = b"".join(b"\x02" + pixels[y * w * 3 : (y + 1) * w * 3] for y in range(h))  # every row "Up"
    assert png._bands(raw, h, 1 + w * 3) == [(0, h)]


def test_a_bad_filter_byte_in_a_later_band_falls_back_to_pillows_error(monkeypatch: pytest.MonkeyPatch) -> None:
    cores(monkeypatch, 2)
    data = encode(ui(2800, 2000), "PNG")
    raw, stride = filtered_rows(data)
    (_, _), (y0, _) = png._bands(raw, 2000, stride)
    broken = bytearray(raw)
    broken[(y0 + 5) * stride] = 9  # no such filter
    idat = zlib.compress(bytes(broken))
    chunk = struct.pack(">I", len(idat)) + b"IDAT" + idat + struct.pack(">I", zlib.crc32(b"IDAT" + idat))
    bad = data[:33] + chunk + data[-12:]  # signature + IHDR, the new IDAT, IEND
    assert png.decode(Image.open(io.BytesIO(bad)), bad) is None
    with pytest.raises(ImageError) as e:
        normalize(bad, TGA)
    assert e.value.status == 400 and "cannot decode image" in e.value.message


@pytest.mark.parametrize("n", [2, 3, 4])
@pytest.mark.parametrize("size", [(3840, 2160), (1000, 3000), (5000, 700), (2561, 1441)])
def test_banded_resize_and_tga_equal_the_whole(monkeypatch: pytest.MonkeyPatch, n: int, size: tuple[int, int]) -> None:
    if not resample.SIMD:
        pytest.skip("bands need the SIMD resizer")
    im = ui(*size)
    grid = settings().grid.to_rule().size(*size)
    whole = encode(resample.resize(im, grid, "lanczos", 2.0), "TGA", compression="tga_rle")
    cores(monkeypatch, n)
    out = bands.tga(im, grid, "lanczos", 2.0)
    assert out is not None and out == whole
    decoded = Image.open(io.BytesIO(out))
    assert decoded.size == grid


def test_the_pipeline_sends_the_same_bytes_with_and_without_bands(monkeypatch: pytest.MonkeyPatch) -> None:
    data = encode(ui(2400, 1500), "PNG")
    cores(monkeypatch, 1)
    one, _, _ = normalize(data, TGA)
    cores(monkeypatch, 2)
    two, info, mime = normalize(data, TGA)
    assert mime == "image/x-tga" and (info.width, info.height) == two.size
    assert one.tobytes() == two.tobytes()


def test_small_images_and_one_core_stay_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    cores(monkeypatch, 4)
    assert bands.tga(ui(640, 480), (640, 480), "lanczos", 2.0) is None  # on the grid: nothing to resize
    assert bands.tga(ui(800, 600), (512, 384), "lanczos", 2.0) is None  # < 2 bands' worth of pixels
    cores(monkeypatch, 1)
    assert bands.tga(ui(3840, 2160), (1856, 1056), "lanczos", 2.0) is None


def test_split_takes_back_bands_no_helper_started() -> None:
    """Every helper busy (other images): the caller does all bands itself instead of waiting in the queue."""
    split.run(lambda i: i, [0, 1])  # the helper pool exists
    assert split._helpers is not None
    gate = threading.Event()
    blockers = [split._helpers.submit(gate.wait) for _ in range(split.MAX_BANDS - 1)]
    try:
        ran_on: list[str] = []

        def work(item: int) -> int:
            ran_on.append(threading.current_thread().name)
            return item * 2

        assert split.run(work, [0, 1, 2]) == [0, 2, 4]
        assert ran_on == [threading.current_thread().name] * 3
    finally:
        gate.set()
        for blocker in blockers:
            blocker.result()


def test_split_raises_the_callers_error_and_a_helpers_error() -> None:
    def boom(item: int) -> int:
        if item == 1:
            raise ValueError("band 1")
        return item

    with pytest.raises(ValueError, match="band 1"):
        split.run(boom, [0, 1, 2])
    with pytest.raises(ValueError, match="band 1"):
        split.run(boom, [1, 0])
