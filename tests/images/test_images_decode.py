"""Decoding: formats, first frames, EXIF orientation, colour modes, and what is refused (with the reason)."""

from __future__ import annotations

import io
import resource
import time

import numpy as np
import pytest
from PIL import Image, features

from support.images import (
    close,
    encode,
    error_of,
    normalize,
    png_raw,
    quadrants,
    settings,
)
from vlgate.gateway.apis.openai.errors import error_object
from vlgate.images import GridRule
from vlgate.images.decode import TRANSPOSE, available_formats

RED, GREEN, BLUE, YELLOW = (220, 30, 30), (30, 200, 40), (30, 40, 210), (240, 220, 40)


def photo(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    arr = np.stack([x * 255 // max(w, 1), y * 255 // max(h, 1), (x + y) * 127 // max(w + h, 1)], -1)
    arr = arr + rng.integers(-20, 21, arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


# ---------------------------------------------------------------- formats

@pytest.mark.parametrize("fmt,kw", [
    ("JPEG", {"quality": 95}), ("PNG", {}), ("WEBP", {"quality": 95}), ("WEBP", {"lossless": True}),
    ("GIF", {}), ("BMP", {}), ("TIFF", {}), ("TIFF", {"compression": "tiff_lzw"}), ("TIFF", {"compression": "jpeg"}),
])
def test_formats_decode_to_grid_rgb(fmt: str, kw: dict) -> None:
    src = quadrants(300, 200, (RED, GREEN, BLUE, YELLOW))
    out, info, mime = normalize(encode(src, fmt, **kw), mime="image/png")  # the claimed MIME is ignored
    assert (info.orig_width, info.orig_height) == (300, 200)
    assert (info.width, info.height) == GridRule().size(300, 200) == (320, 224)
    assert out.size == (320, 224) and out.mode == "RGB"
    assert mime in ("image/jpeg", "image/x-tga")
    for (x, y), c in zip(((40, 40), (280, 40), (40, 180), (280, 180)), (RED, GREEN, BLUE, YELLOW), strict=True):
        assert close(out.getpixel((x, y)), c, 12), (fmt, (x, y), out.getpixel((x, y)), c)
    assert len(info.sha256) == 64


def test_avif_when_pillow_has_it() -> None:
    src = quadrants(256, 128, (RED, GREEN, BLUE, YELLOW))
    if "AVIF" in available_formats(["AVIF"]):
        out, info, _ = normalize(encode(src, "AVIF", quality=90))
        assert (info.width, info.height) == (256, 128)
        assert close(out.getpixel((30, 30)), RED, 20)
    else:  # no AVIF codec here: refused with the reason, not a 500
        fake = b"\x00\x00\x00\x1cftypavif" + b"\x00" * 64
        assert "AVIF" in error_of(fake).message


def test_heic_needs_the_heif_extra() -> None:
    try:
        import pillow_heif  # type: ignore[import-not-found]
    except ImportError:
        fake = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64
        msg = error_of(fake).message
        assert "HEIF" in msg and "vlgate[heif]" in msg
    else:
        pillow_heif.register_heif_opener()
        out, info, _ = normalize(encode(quadrants(256, 128, (RED, GREEN, BLUE, YELLOW)), "HEIF", quality=95))
        assert (info.width, info.height) == (256, 128) and close(out.getpixel((30, 30)), RED, 20)


def test_gif_and_apng_first_frame() -> None:
    frames = [Image.new("RGB", (64, 64), c) for c in (RED, GREEN, BLUE)]
    gif = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    apng = encode(frames[0], "PNG", save_all=True, append_images=frames[1:], duration=50)
    webp = encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=50, lossless=True)
    for data in (gif, apng, webp):
        assert Image.open(io.BytesIO(data)).n_frames == 3
        out, info, _ = normalize(data)
        assert (info.width, info.height) == (64, 64)
        assert close(out.getpixel((32, 32)), RED, 8), out.getpixel((32, 32))


def test_too_many_frames_refused() -> None:
    frames = [Image.new("RGB", (16, 16), (i * 20, 0, 0)) for i in range(6)]
    gif = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    e = error_of(gif, settings(limits={"max_frames": 5}))
    assert "6 frames" in e.message and e.param == "messages[1].content[0].image_url"


# ---------------------------------------------------------------- EXIF orientation

INVERSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
           5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE,
           8: Image.Transpose.ROTATE_270}


def stored_for(upright: Image.Image, orientation: int) -> Image.Image:
    """The pixels a camera stores so that `orientation` shows `upright`."""
    return upright if orientation == 1 else upright.transpose(INVERSE[orientation])


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_exif_orientation(orientation: int, fmt: str) -> None:
    upright = quadrants(320, 160, (RED, GREEN, BLUE, YELLOW))
    stored = stored_for(upright, orientation)
    assert stored.transpose(TRANSPOSE[orientation]).tobytes() == upright.tobytes() if orientation > 1 else True
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(stored, fmt, exif=exif, quality=95)
    out, info, _ = normalize(data)
    assert (info.orig_width, info.orig_height) == (320, 160)  # post-rotation
    assert (info.width, info.height) == out.size == (320, 160)
    for (x, y), c in zip(((60, 40), (260, 40), (60, 120), (260, 120)), (RED, GREEN, BLUE, YELLOW), strict=True):
        assert close(out.getpixel((x, y)), c, 12), (orientation, (x, y), out.getpixel((x, y)), c)


@pytest.mark.parametrize("orientation", [6, 8, 3])
def test_exif_orientation_with_jpeg_draft_path(orientation: int) -> None:
    """A big phone photo stored sideways: the DCT-scaled decode and resize happen before the rotation."""
    upright = quadrants(4000, 1500, (RED, GREEN, BLUE, YELLOW))
    exif = Image.Exif()
    exif[0x0112] = orientation
    out, info, _ = normalize(encode(stored_for(upright, orientation), "JPEG", exif=exif, quality=90))
    assert (info.orig_width, info.orig_height) == (4000, 1500)
    assert (info.width, info.height) == GridRule().size(4000, 1500) == out.size
    w, h = out.size
    for (x, y), c in zip(((w // 4, h // 4), (3 * w // 4, h // 4), (w // 4, 3 * h // 4), (3 * w // 4, 3 * h // 4)),
                         (RED, GREEN, BLUE, YELLOW), strict=True):
        assert close(out.getpixel((x, y)), c, 12)


def test_output_is_plain_baseline_jpeg_without_exif() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    out, _, mime = normalize(encode(photo(640, 480), "JPEG", exif=exif, quality=90), mime="image/jpeg")
    assert mime == "image/jpeg" and out.format == "JPEG"
    assert out.getexif().get(0x0112) is None
    assert not out.info.get("progressive") and not out.info.get("progression")
    assert out.size == (480, 640)


# ---------------------------------------------------------------- colour modes

def test_cmyk_jpeg_and_tiff() -> None:
    cyan = Image.new("CMYK", (64, 64), (255, 0, 0, 0))
    out, _, _ = normalize(encode(cyan, "JPEG", quality=95))
    assert close(out.getpixel((32, 32)), (0, 255, 255), 6), out.getpixel((32, 32))
    grey = Image.new("CMYK", (64, 64), (0, 255, 0, 128))  # magenta at half black: (255-K) * (255-M)/255
    out, _, _ = normalize(encode(grey, "TIFF"))
    assert close(out.getpixel((32, 32)), (127, 0, 127), 2), out.getpixel((32, 32))


def test_16bit_grey_png_scaled_not_clipped() -> None:
    arr = np.tile(np.linspace(0, 65535, 256, dtype=np.uint16), (64, 1))
    img = Image.fromarray(arr)
    assert img.mode.startswith("I;16")
    out, _, _ = normalize(encode(img, "PNG"))
    assert out.size == (256, 64)
    row = [out.getpixel((x, 32))[0] for x in (10, 64, 128, 200, 245)]
    expect = [round(arr[32, x] / 257) for x in (10, 64, 128, 200, 245)]
    # a clipping convert gives 255s
    assert all(abs(a - b) <= 3 for a, b in zip(row, expect, strict=True)), (row, expect)


def test_16bit_rgb_png() -> None:
    px = np.array([65535, 32768, 0], dtype=">u2")
    rows = b"".join(b"\x00" + px.tobytes() * 32 for _ in range(32))
    out, _, _ = normalize(png_raw(32, 32, 2, 16, rows))
    assert close(out.getpixel((16, 16)), (255, 128, 0), 2)


def test_palette_with_transparency_over_white() -> None:
    img = Image.new("P", (64, 64), 0)
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    img.paste(1, (32, 0, 64, 64))
    img.info["transparency"] = 0
    for fmt in ("PNG", "GIF"):
        out, _, _ = normalize(encode(img, fmt, transparency=0))
        assert close(out.getpixel((10, 32)), (255, 255, 255), 2), fmt  # transparent red -> white
        assert close(out.getpixel((50, 32)), (0, 0, 255), 6), fmt


def test_la_and_rgba_alpha_over_white() -> None:
    la = Image.new("LA", (64, 64), (0, 0))
    la.paste((0, 255), (0, 0, 32, 64))
    out, _, _ = normalize(encode(la, "PNG"))
    assert out.getpixel((10, 10)) == (0, 0, 0) and out.getpixel((50, 10)) == (255, 255, 255)
    rgba = Image.new("RGBA", (64, 64), (255, 0, 0, 128))
    rgba.paste((0, 0, 255, 0), (32, 0, 64, 64))
    out, _, _ = normalize(encode(rgba, "PNG"))
    assert close(out.getpixel((10, 10)), (255, 127, 127), 2)  # half red over white
    assert out.getpixel((50, 10)) == (255, 255, 255)  # fully transparent: white, not the hidden blue


def test_rgb_png_colour_key_and_1bit() -> None:
    img = Image.new("RGB", (64, 64), (0, 255, 0))
    img.paste((9, 9, 9), (0, 0, 32, 64))
    out, _, _ = normalize(encode(img, "PNG", transparency=(9, 9, 9)))
    assert out.getpixel((10, 10)) == (255, 255, 255) and out.getpixel((50, 10)) == (0, 255, 0)
    bw = Image.new("1", (64, 64), 0)
    bw.paste(1, (32, 0, 64, 64))
    out, _, _ = normalize(encode(bw, "BMP"))
    assert out.getpixel((10, 10)) == (0, 0, 0) and out.getpixel((50, 10)) == (255, 255, 255)


def test_icc_profile_converted_to_srgb() -> None:
    from PIL import ImageCms

    lab_ish = ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes()  # not RGB: ignored safely
    img = Image.new("RGB", (64, 64), (200, 100, 50))
    out, _, _ = normalize(encode(img, "PNG", icc_profile=lab_ish))
    assert close(out.getpixel((5, 5)), (200, 100, 50), 1)
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    out, _, _ = normalize(encode(img, "PNG", icc_profile=srgb))
    assert close(out.getpixel((5, 5)), (200, 100, 50), 1)


# ---------------------------------------------------------------- encode choice

def test_screenshot_lossless_photo_jpeg() -> None:
    from PIL import ImageDraw

    shot = Image.new("RGB", (800, 600), (255, 255, 255))
    draw = ImageDraw.Draw(shot)
    for y in range(10, 590, 14):
        draw.text((10, y), "The quick brown fox 0123456789 " * 3, fill=(0, 0, 0))
    out, _, mime = normalize(encode(shot, "PNG"))
    assert mime == "image/x-tga" and out.format == "TGA"
    out, _, mime = normalize(encode(shot, "PNG"), settings(encode={"lossless_format": "png"}))
    assert mime == "image/png" and out.format == "PNG"
    _, _, mime = normalize(encode(photo(800, 600), "PNG"))
    assert mime == "image/jpeg"  # many colours: JPEG
    _, _, mime = normalize(encode(shot, "JPEG"))
    assert mime == "image/jpeg"  # lossy source: JPEG
    _, _, mime = normalize(encode(photo(64, 64), "PNG"), settings(encode={"format": "png"}))
    assert mime == "image/png"
    _, _, mime = normalize(encode(shot, "PNG"), settings(encode={"format": "jpeg"}))
    assert mime == "image/jpeg"


def test_resize_filters_all_reach_the_grid() -> None:
    src = encode(photo(1000, 700), "JPEG")
    for f in ("lanczos", "bicubic", "bilinear", "box"):
        out, info, _ = normalize(src, settings(encode={"resample": f, "jpeg_quality": 80}))
        assert out.size == (info.width, info.height) == (1024, 704)
        out, info, _ = normalize(encode(photo(1000, 700), "PNG"),
                                 settings(encode={"resample_text": f, "format": "png"}))
        assert out.size == (info.width, info.height) == (1024, 704)


# ---------------------------------------------------------------- refused

@pytest.mark.parametrize("data,word", [
    (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', "SVG"),
    (b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>', "SVG"),
    (b"%PDF-1.7\n1 0 obj<<>>endobj\n", "PDF"),
    (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "EPS"),
    (b"<!DOCTYPE html><html><body>hi</body></html>", "HTML"),
    (b"\x00\x01garbage\xff" * 30, "cannot decode"),
    (b"PK\x03\x04" + b"\x00" * 40, "ZIP"),
])
def test_non_images_refused_with_reason(data: bytes, word: str) -> None:
    e = error_of(data, mime="image/jpeg")
    assert word in e.message, e.message
    assert error_object(e)["error"]["param"] == "messages[1].content[0].image_url"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "TIFF", "BMP"])
def test_truncated_files_refused(fmt: str) -> None:
    data = encode(photo(300, 300), fmt)
    e = error_of(data[: len(data) // 2])
    assert "cannot decode" in e.message or "truncated" in e.message, e.message


def test_formats_outside_the_allowlist_are_refused() -> None:
    s = settings(formats=["PNG"])
    e = error_of(encode(photo(64, 64), "JPEG"), s)
    assert "JPEG" in e.message and "PNG" in e.message
    # ICO, PSD, ... are Pillow formats but not on the list
    assert "ICO" in error_of(encode(photo(32, 32), "ICO")).message


def test_decompression_bomb_refused_fast_with_flat_memory() -> None:
    bomb = png_raw(20000, 20000, 2, 8, None, truncate_idat=True)  # 1.2 GB of pixels declared in 80 bytes
    assert len(bomb) < 100
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    e = error_of(bomb)
    assert time.perf_counter() - t < 1.0
    assert "too large" in e.message
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100 * 1024  # KiB: nothing was decoded
    # under Pillow's own bomb threshold (89 MP) but over ours: refused from the header, too
    e = error_of(png_raw(9000, 9000, 2, 8, None, truncate_idat=True))
    assert "81000000 pixels" in e.message and "40000000" in e.message


def test_pixel_cap_is_configurable() -> None:
    assert "too large" in error_of(encode(photo(200, 200), "PNG"), settings(limits={"max_pixels": 39999})).message
    _, info, _ = normalize(encode(photo(200, 200), "PNG"), settings(limits={"max_pixels": 40000}))
    assert info.orig_width == 200


def test_extreme_aspect_ratio() -> None:
    """Youtu-VL's rule always fits (llama.cpp squashes); Qwen's can overflow its budget: refused, not sent."""
    _, info, _ = normalize(encode(Image.new("L", (39000, 1), 0), "PNG"))
    assert (info.width, info.height) == (39008, 32)
    qwen = settings(grid={"rule": "preserved_ratio", "patch_size": 14, "max_tokens": 4096})
    assert "aspect ratio" in error_of(encode(Image.new("L", (200000, 1), 0), "PNG"), qwen).message
    _, info, _ = normalize(encode(Image.new("L", (1000, 500), 0), "PNG"), qwen)
    assert (info.width, info.height) == (1008, 504)


def test_empty_and_features_smoke() -> None:
    assert "empty" in error_of(b"").message
    assert features.check("jpg") and features.check("zlib")
