"""Without cykooz-resizer (no wheel on Linux aarch64 or musl; pyproject.toml's marker leaves it out there)
images still reach the model's exact grid, through Pillow's resize, and look the same: the image path runs
with the SIMD resizer absent (its import failing, as on ARM) and is checked against the SIMD output."""

from __future__ import annotations

import importlib
import io
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
from PIL import Image, ImageDraw

from support.images import encode, normalize, settings
from vlgate.images import resample

PSNR_DB = 40  # measured 45-58 dB (resample.py's docstring): rounding apart, the same pixels


def psnr(a: Image.Image, b: Image.Image) -> float:
    mse = float(((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2).mean())
    return float("inf") if mse == 0 else 10 * float(np.log10(255**2 / mse))


def photo(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    arr = np.stack([x * 255 // w, y * 255 // h, ((x // 16 + y // 16) % 2) * 200 + 20], -1)
    return Image.fromarray(np.clip(arr + rng.integers(-10, 11, arr.shape), 0, 255).astype(np.uint8))


def screenshot(w: int = 1920, h: int = 1080) -> Image.Image:
    im = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(im)
    for y in range(0, h, 18):
        draw.text((10, y), "The quick brown fox jumps over the lazy dog 0123456789 " * 4, fill=(20, 20, 20))
    return im


@contextmanager
def without_simd() -> Iterator[None]:
    """resample.py imported again with `cykooz_resizer` unimportable (what a platform without its wheel sees)."""
    saved = sys.modules.get("cykooz_resizer")
    sys.modules["cykooz_resizer"] = None  # type: ignore[assignment]  # None in sys.modules: the import raises
    try:
        importlib.reload(resample)
        assert resample.SIMD is False
        yield
    finally:
        if saved is None:
            del sys.modules["cykooz_resizer"]
        else:
            sys.modules["cykooz_resizer"] = saved
        importlib.reload(resample)
        assert resample.SIMD is True


CASES = [
    ("photo JPEG", lambda: encode(photo(2016, 1512), "JPEG", quality=95), {}),
    ("photo 12 MP JPEG", lambda: encode(photo(4032, 3024, 2), "JPEG", quality=90), {}),
    ("screenshot PNG", lambda: encode(screenshot(), "PNG"), {"format": "png"}),
    ("RGBA PNG", lambda: encode(photo(1200, 900, 3).convert("RGBA"), "PNG"), {"format": "png"}),
    ("grey PNG, bicubic", lambda: encode(photo(1000, 700, 4).convert("L"), "PNG"),
     {"format": "png", "resample_text": "bicubic"}),
]


def run_cases() -> list[tuple[Image.Image, tuple[int, int]]]:
    out = []
    for _, make, encode_settings in CASES:
        img, info, _ = normalize(make(), settings(encode={"jpeg_quality": 95, **encode_settings}))
        out.append((img.convert("RGB"), (info.width, info.height)))
    return out


def test_image_path_without_the_simd_resizer_reaches_the_grid() -> None:
    simd = run_cases()
    with without_simd():
        fallback = run_cases()
    grid = settings().grid.to_rule()
    for (name, make, _), (got, got_info), (want, want_info) in zip(CASES, fallback, simd, strict=True):
        src = Image.open(io.BytesIO(make()))
        assert got.size == got_info == want.size == want_info == grid.size(*src.size), name
        assert psnr(got, want) > PSNR_DB, (name, psnr(got, want))


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "CMYK", "LA"])
@pytest.mark.parametrize("name", ["lanczos", "bicubic", "bilinear", "box"])
def test_pillow_fallback_matches_simd(mode: str, name: str) -> None:
    src = photo(2016, 1512).convert(mode)
    want = resample.resize(src, (896, 672), name, 2.0)
    resample.SIMD = False  # the module flag alone (as a platform without the wheel has it)
    try:
        got = resample.resize(src, (896, 672), name, 2.0)
    finally:
        resample.SIMD = True
    assert got.mode == want.mode == mode and got.size == want.size == (896, 672)
    assert psnr(got, want) > PSNR_DB, psnr(got, want)


def test_rgbx_without_simd_comes_back_rgb() -> None:
    rgbx = photo(800, 600).convert("RGBX")
    resample.SIMD = False
    try:
        got = resample.resize(rgbx, (448, 336), "lanczos", None)
    finally:
        resample.SIMD = True
    assert got.mode == "RGB" and got.size == (448, 336)
