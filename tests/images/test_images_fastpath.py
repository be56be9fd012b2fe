"""The fast paths: libjpeg-turbo DCT-scaled decode (simplejpeg) and SIMD resize (cykooz-resizer).

Each must give what the plain Pillow path gives (same pixels within JPEG/rounding noise) and step aside,
not fail, where it does not apply.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from support.images import encode, error_of, normalize
from vlgate.images import color, jpeg, resample


def photo(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    arr = np.stack([x * 255 // w, y * 255 // h, ((x // 16 + y // 16) % 2) * 200 + 20], -1)
    arr = arr + rng.integers(-10, 11, arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def mean_abs_diff(a: Image.Image, b: Image.Image) -> float:
    assert a.size == b.size and a.mode == b.mode
    return float(np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).mean())


def pillow_draft(data: bytes, target: tuple[int, int]) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.draft(im.mode, target)
    im.load()
    return im


# ---------------------------------------------------------------- JPEG decode

@pytest.mark.parametrize("size,target,n", [
    ((4032, 3024), (1632, 1216), 2), ((4032, 3024), (1000, 750), 4), ((4032, 3024), (400, 300), 8),
    ((2000, 1500), (1632, 1216), 1), ((1633, 1217), (1632, 1216), 1), ((3265, 2433), (1632, 1216), 2),
])
def test_scale_is_the_largest_that_keeps_the_target(size: tuple[int, int], target: tuple[int, int], n: int) -> None:
    assert jpeg.scale_for(size, target) == n


@pytest.mark.parametrize("mode,kw", [
    ("RGB", {"quality": 90}), ("RGB", {"quality": 90, "progressive": True}), ("RGB", {"quality": 90, "subsampling": 0}),
    ("L", {"quality": 90}),
])
def test_fast_decode_matches_pillow_draft(mode: str, kw: dict) -> None:
    data = encode(photo(1200, 900).convert(mode), "JPEG", **kw)
    target = (560, 420)  # 1/2 scale
    fast = jpeg.decode(data, mode, (1200, 900), target)
    assert fast is not None and fast.size == (600, 450)
    assert fast.mode == ("RGBX" if mode == "RGB" else "L")  # zero-copy view of the decoder's buffer
    assert mean_abs_diff(fast.convert(mode), pillow_draft(data, target)) < 1.5


def test_rgbx_buffer_resizes_exactly_like_its_rgb_copy() -> None:
    data = encode(photo(1200, 900), "JPEG", quality=90)
    fast = jpeg.decode(data, "RGB", (1200, 900), (600, 450))
    assert fast is not None
    for name in PILLOW:
        got = resample.resize(fast, (544, 416), name, None)
        assert got.mode == "RGB"
        assert got.tobytes() == resample.resize(fast.convert("RGB"), (544, 416), name, None).tobytes()


@pytest.mark.parametrize("size", [(640, 480), (1632, 1216)])
def test_jpeg_already_on_the_grid_is_not_resized(size: tuple[int, int]) -> None:
    src = smooth_photo(*size)
    out, info, mime = normalize(encode(src, "JPEG", quality=95), mime="image/jpeg")
    assert (info.width, info.height) == size == out.size and out.mode == "RGB" and mime == "image/jpeg"
    assert psnr(out, src) > 35


def test_fast_decode_steps_aside_for_cmyk_and_broken_data() -> None:
    cmyk = encode(photo(400, 300).convert("CMYK"), "JPEG", quality=90)
    assert jpeg.decode(cmyk, "CMYK", (400, 300), (200, 150)) is None
    good = encode(photo(400, 300), "JPEG", quality=90)
    assert jpeg.decode(good[: len(good) // 2], "RGB", (400, 300), (200, 150)) is None  # truncated
    assert jpeg.decode(good[:2] + b"\x00" * 200, "RGB", (400, 300), (200, 150)) is None
    assert jpeg.decode(good, "RGB", (400, 301), (200, 150)) is None  # not the size the limits were checked on
    assert jpeg.decode(good, "RGB", (400, 300), (200, 150)) is not None


def test_cmyk_jpeg_still_normalizes_through_pillow() -> None:
    out, info, _ = normalize(encode(Image.new("CMYK", (400, 300), (0, 255, 255, 0)), "JPEG", quality=95))
    assert out.size == (info.width, info.height) and out.mode == "RGB"
    r, g, b = out.getpixel((100, 100))
    assert r > 200 and g < 60 and b < 60  # pure magenta+yellow ink = red


def test_truncated_jpeg_keeps_pillows_reason() -> None:
    data = encode(photo(3000, 2000), "JPEG", quality=90)
    assert "truncated" in error_of(data[: len(data) // 3]).message


def test_big_jpeg_output_close_to_full_decode_reference() -> None:
    """DCT-scaled decode + SIMD bilinear + q90 vs full decode + Pillow LANCZOS (unencoded): as close as the naive
    path (full decode, Pillow LANCZOS, q90) gets, and no visible difference (PSNR > 35 dB)."""
    for size in ((3200, 2400), (4032, 3024)):  # decoded at 1/1 and at 1/2
        data = encode(smooth_photo(*size), "JPEG", quality=92)
        out, info, _ = normalize(data, mime="image/jpeg")
        assert (info.orig_width, info.orig_height) == size and out.size == (info.width, info.height)
        full = Image.open(io.BytesIO(data)).convert("RGB")
        ref = full.resize(out.size, Image.Resampling.LANCZOS)
        naive = Image.open(io.BytesIO(encode(ref, "JPEG", quality=90)))
        assert psnr(out, ref) > 35 and psnr(out, ref) > psnr(naive, ref) - 1.0, (size, psnr(out, ref), psnr(naive, ref))


def smooth_photo(w: int, h: int) -> Image.Image:
    """Photo-like: smooth fields at several scales, hard edges, mild sensor noise."""
    rng = np.random.default_rng(7)
    acc = np.zeros((h, w, 3), np.float32) + 110
    for cells, amp in ((4, 60), (32, 25), (256, 10)):
        small = rng.integers(0, 256, (cells * h // w + 1, cells, 3), dtype=np.uint8)
        field = np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC), np.float32)
        acc += (field - 128) * amp / 128
    acc[h // 3 : h // 2, w // 4 : w // 2] = (200, 40, 40)  # a hard-edged object
    acc += rng.normal(0, 1.5, acc.shape).astype(np.float32)
    return Image.fromarray(np.clip(acc, 0, 255).astype(np.uint8))


def psnr(a: Image.Image, b: Image.Image) -> float:
    mse = float(((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2).mean())
    return 10 * float(np.log10(255**2 / mse))


# ---------------------------------------------------------------- resize

PILLOW = {"lanczos": Image.Resampling.LANCZOS, "bicubic": Image.Resampling.BICUBIC,
          "bilinear": Image.Resampling.BILINEAR, "box": Image.Resampling.BOX}


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "CMYK", "LA"])
@pytest.mark.parametrize("name", list(PILLOW))
@pytest.mark.parametrize("size", [(1632, 1216), (2400, 1800), (200, 150)])
def test_resize_matches_pillow(mode: str, name: str, size: tuple[int, int]) -> None:
    src = photo(2016, 1512).convert(mode)
    if mode in ("RGBA", "LA"):
        alpha = Image.linear_gradient("L").resize(src.size)
        src.putalpha(alpha)
    got = resample.resize(src, size, name, None)
    want = src.resize(size, PILLOW[name])
    assert got.mode == mode and got.size == size
    if mode in ("RGBA", "LA"):  # colour under near-zero alpha is noise in both: compare what is shown (over white)
        got, want = color.to_rgb(got, None, False), color.to_rgb(want, None, False)
    assert mean_abs_diff(got, want) < 0.6, (mode, name, size)


def test_resize_reducing_gap_like_pillow() -> None:
    src = photo(3840, 2160)
    got = resample.resize(src, (640, 352), "lanczos", 2.0)
    want = src.resize((640, 352), Image.Resampling.LANCZOS, reducing_gap=2.0)
    assert mean_abs_diff(got, want) < 0.6
    assert resample.resize(src, src.size, "lanczos", 2.0) is src


def test_rgbx_buffer_reduced_then_resized_as_rgb() -> None:
    data = encode(photo(1600, 1200), "JPEG", quality=90)
    fast = jpeg.decode(data, "RGB", (1600, 1200), (48, 32))  # 1/8 scale: 200x150, then reduce(2) + resize
    assert fast is not None and fast.size == (200, 150)
    got = resample.resize(fast, (48, 32), "bilinear", 2.0)
    assert got.mode == "RGB" and got.size == (48, 32)
    want = fast.convert("RGB").resize((48, 32), Image.Resampling.BILINEAR, reducing_gap=2.0)
    assert mean_abs_diff(got, want) < 0.6
