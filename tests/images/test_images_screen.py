"""Screenshot or photo: real screenshots (anti-aliased text, gradients, icons: thousands of colours) stay lossless,
photos saved as PNG still become JPEG. Through the real pipeline."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from support.gateway_process import GatewayProcess
from support.images import data_url, encode, normalize, settings
from vlgate.images import screen

INKS = [(20, 20, 20), (170, 30, 30), (30, 110, 200), (40, 140, 60), (120, 60, 160), (200, 120, 0)]


def ui(w: int = 1280, h: int = 800, seed: int = 0) -> Image.Image:
    """A desktop: vertical-gradient background, windows with gradient title bars, icons, coloured AA text."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    bg = np.array((243, 244, 246), np.float32) * (1 - t) + np.array((90, 120, 180), np.float32) * t
    img = Image.fromarray(np.broadcast_to(bg, (h, w, 3)).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=15)  # FreeType, anti-aliased
    for k in range(4):
        x0, y0 = 40 + k * w // 5, 30 + k * h // 8
        x1, y1 = x0 + w // 2, y0 + h // 2
        draw.rounded_rectangle((x0, y0, x1, y1), 10, fill=(255, 255, 255), outline=(120, 120, 130))
        ramp = np.linspace(0, 1, x1 - x0, dtype=np.float32)[None, :, None]
        bar = np.array((50, 80, 150)) * (1 - ramp) + np.array((90, 140, 210)) * ramp
        img.paste(Image.fromarray(np.broadcast_to(bar, (26, x1 - x0, 3)).astype(np.uint8)), (x0, y0))
        draw.text((x0 + 8, y0 + 4), f"Window {k}", fill=(255, 255, 255), font=font)
        for i in range(5):
            draw.ellipse((x0 + 10 + 30 * i, y0 + 34, x0 + 32 + 30 * i, y0 + 56), fill=tuple(rng.integers(0, 256, 3)))
        for j, y in enumerate(range(y0 + 64, y1 - 20, 20)):
            draw.text((x0 + 10, y), "error config gateway token 0123456789 Settings " * 2, fill=INKS[(j + k) % 6],
                      font=font)
    return img


def photo(w: int = 1280, h: int = 800, seed: int = 1, noise: float = 3.0) -> Image.Image:
    """Smooth fields, hard-edged shapes and sensor noise."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 40, w // 40, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(40):
        x, y, r = int(rng.integers(0, w)), int(rng.integers(0, h)), int(rng.integers(10, w // 6))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    arr = np.asarray(img.filter(ImageFilter.GaussianBlur(1.0)), np.float32)
    arr += rng.normal(0, noise, arr.shape).astype(np.float32)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def colours(im: Image.Image) -> int:
    return len(im.resize((256, 256), Image.Resampling.NEAREST).getcolors(1 << 16))


def test_antialiased_screenshot_with_many_colours_stays_lossless() -> None:
    shot = ui()
    assert colours(shot) > 512  # what the old colour-count rule sent to JPEG
    out, info, mime = normalize(encode(shot, "PNG"))
    assert mime == "image/x-tga" and out.format == "TGA"
    png, _, mime = normalize(encode(shot, "PNG"), settings(encode={"lossless_format": "png"}))
    assert mime == "image/png"
    assert np.array_equal(np.asarray(out.convert("RGB")), np.asarray(png.convert("RGB")))  # same pixels, both exact
    assert out.size == (info.width, info.height)


def test_screenshot_with_a_photo_wallpaper_stays_lossless() -> None:
    shot = photo()
    shot.paste(ui(640, 800).crop((0, 0, 640, 800)), (0, 0))
    _, _, mime = normalize(encode(shot, "PNG"))
    assert mime == "image/x-tga"


@pytest.mark.parametrize("variant", ["noisy", "smooth", "clipped sky", "RGBA"])
def test_photo_saved_as_png_becomes_jpeg(variant: str) -> None:
    im = photo(noise=8.0 if variant == "noisy" else 3.0)
    if variant == "smooth":
        im = im.filter(ImageFilter.GaussianBlur(2.5))
    if variant == "clipped sky":  # a third blown out to pure white: blank, not UI
        im.paste((255, 255, 255), (0, 0, im.width, im.height // 3))
    if variant == "RGBA":
        im = im.convert("RGBA")
    assert screen.text_tile_share(im) == 0.0
    _, _, mime = normalize(encode(im, "PNG"))
    assert mime == "image/jpeg"


def test_png_max_colors_keeps_its_meaning() -> None:
    dither = Image.fromarray(np.random.default_rng(3).choice(np.array([[0, 0, 0], [255, 255, 255], [200, 30, 30]],
                                                                       np.uint8), (300, 400)))
    assert screen.text_tile_share(dither) == 0.0  # no flat runs: only the colour count keeps it lossless
    assert normalize(encode(dither, "PNG"))[2] == "image/x-tga"
    assert normalize(encode(dither, "PNG"), settings(encode={"png_max_colors": 2}))[2] == "image/jpeg"
    shot = encode(ui(), "PNG")
    assert normalize(shot, settings(encode={"png_max_colors": 0}))[2] == "image/jpeg"  # 0: never lossless in auto
    assert normalize(shot, settings(encode={"lossless_min_text_tiles": 0}))[2] == "image/jpeg"  # the old rule


def test_forced_formats() -> None:
    src = encode(photo(), "PNG")
    tga, _, mime = normalize(src, settings(encode={"format": "tga"}))
    assert mime == "image/x-tga"
    png, _, mime = normalize(src, settings(encode={"format": "png"}))
    assert mime == "image/png"
    assert np.array_equal(np.asarray(tga.convert("RGB")), np.asarray(png.convert("RGB")))
    assert normalize(encode(ui(), "PNG"), settings(encode={"format": "jpeg"}))[2] == "image/jpeg"


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBX", "RGBA", "CMYK"])  # what color.to_resizable hands on
def test_text_tile_share_any_mode_and_size(mode: str) -> None:
    assert screen.text_tile_share(ui(640, 400).convert(mode)) > 0.05
    assert screen.text_tile_share(photo(640, 400).convert(mode)) == 0.0
    for size in ((1, 1), (2, 2), (1, 300), (300, 1), (5, 300), (300, 5), (70, 70)):
        assert 0.0 <= screen.text_tile_share(ui(640, 400).resize(size).convert(mode)) <= 1.0




def _chat(url: str, image_url: str) -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", timeout=60, json={
        "model": "youtu-vl", "max_tokens": 1,
        "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_url}},
                                                  {"type": "text", "text": "read it"}]}]})


@pytest.mark.slow
def test_llama_server_reads_the_lossless_screenshot(llama_server, tmp_path) -> None:
    """The run-length TGA of a real screenshot (raw and repeat packets) is decoded by llama-server's stb_image;
    one with a broken header is refused, so a 200 means it was read."""
    shot = encode(ui(800, 500), "PNG")
    out, _, mime = normalize(shot)
    assert mime == "image/x-tga"
    tga = encode(out, "TGA", compression="tga_rle")
    srv = llama_server(slots=1, ctx=2048, mmproj=True)
    gw = GatewayProcess({"backends": [{"url": srv.url}]}, tmp_path).start()
    try:
        gw.wait_ready()
        assert _chat(gw.url, data_url(shot)).status_code == 200
        assert _chat(srv.url, data_url(tga, "image/x-tga")).status_code == 200
        assert _chat(srv.url, data_url(tga[:2] + b"\x05" + tga[3:], "image/x-tga")).status_code >= 400  # image type 5
    finally:
        gw.stop()
