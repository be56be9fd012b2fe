"""Image normalization: vlgate's pipeline vs the naive Pillow path, per image, single thread.

    taskset -c 1 python bench/images_bench.py [--repeats 7] [--resample lanczos]

Inputs are generated (seeded): a 12 MP phone-like JPEG (shapes with sharp edges, texture, gradients, sensor
noise, q92 4:2:0), a 4K PNG screenshot (windows, text) and a 1 MP lossy WebP photo. "naive" is
open -> convert("RGB") -> resize(LANCZOS) -> save JPEG q90 to the same grid size. Quality: PSNR of each
output (decoded) against a float-free reference: the full-resolution decode resized with LANCZOS, unencoded.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from vlgate.images.decode import available_formats
from vlgate.images.pipeline import Pipeline
from vlgate.images.settings import ImageSettings


def photo(width: int, height: int, seed: int) -> Image.Image:
    """Photo-like: multi-scale smooth fields, lit gradients, hard-edged objects, fine texture, lens blur, noise."""
    rng = np.random.default_rng(seed)
    acc = np.zeros((height, width, 3), np.float32)
    for cells, amp in ((6, 50), (24, 30), (96, 18), (384, 10)):
        small = rng.normal(0, 1, (max(2, height * cells // width), cells, 3)).astype(np.float32)
        small = ((small - small.min()) / (np.ptp(small) + 1e-9) * 255).astype(np.uint8)
        field = np.asarray(Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC), np.float32)
        acc += (field - 128) * amp / 128
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    acc += np.stack([x / width * 70, y / height * 50, (1 - x / width) * 60], -1) + 100
    img = Image.fromarray(np.clip(acc, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(140):  # objects with sharp edges
        cx, cy = rng.integers(0, width), rng.integers(0, height)
        r = int(rng.integers(width // 80, width // 8))
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.ellipse((cx - r, cy - r // 2, cx + r, cy + r // 2), fill=fill)
        else:
            pts = [(int(cx + rng.normal(0, r)), int(cy + rng.normal(0, r))) for _ in range(5)]
            draw.polygon(pts, fill=fill)
    arr = np.asarray(img, np.float32)
    # fine texture (foliage, fabric) in the lower half
    tex = rng.normal(0, 14, (height // 2, width, 1)).astype(np.float32)
    arr[height // 2 :] += tex
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.7))
    arr = np.asarray(img, np.float32) + rng.normal(0, 2.0, (height, width, 3)).astype(np.float32)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def screenshot(width: int, height: int, seed: int) -> Image.Image:
    """A desktop: flat panels, title bars, many lines of anti-aliased text."""
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (width, height), (236, 238, 241))
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=22)
    words = "the quick brown fox jumps over lazy dog error config gateway image token model 0123456789".split()
    for _ in range(6):
        x0, y0 = int(rng.integers(0, width // 2)), int(rng.integers(0, height // 2))
        x1, y1 = x0 + int(rng.integers(width // 4, width // 2)), y0 + int(rng.integers(height // 4, height // 2))
        draw.rectangle((x0, y0, x1, y1), fill=(255, 255, 255), outline=(180, 180, 190))
        draw.rectangle((x0, y0, x1, y0 + 34), fill=(60, 90, 160))
        draw.text((x0 + 10, y0 + 5), "Window " + " ".join(rng.choice(words, 3)), fill=(255, 255, 255), font=font)
        for line_y in range(y0 + 44, y1 - 26, 28):
            text = " ".join(rng.choice(words, int(rng.integers(4, 14))))
            color = (20, 20, 20) if rng.random() < 0.8 else (170, 30, 30)
            draw.text((x0 + 12, line_y), text, fill=color, font=font)
    return img


def encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def naive(data: bytes, size: tuple[int, int]) -> bytes:
    im = Image.open(io.BytesIO(data)).convert("RGB").resize(size, Image.Resampling.LANCZOS)
    return encode(im, "JPEG", quality=90)


def psnr(a: Image.Image, b: Image.Image) -> float:
    mse = float(((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return min(times), statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--resample", choices=["bilinear", "bicubic", "lanczos", "box"], help="override encode.resample")
    args = ap.parse_args()
    s = ImageSettings()
    if args.resample:
        s = ImageSettings.model_validate({"encode": {"resample": args.resample, "resample_text": args.resample}})
    print(f"resample={s.encode.resample} resample_text={s.encode.resample_text} jpeg_quality={s.encode.jpeg_quality} grid={s.grid.rule} "
          f"max_tokens={s.grid.max_tokens}")
    pipe = Pipeline(s.grid.to_rule(), tuple(available_formats(s.formats)), s.limits, s.encode)
    cases = [
        ("12MP JPEG 4032x3024", encode(photo(4032, 3024, 1), "JPEG", quality=92)),
        ("4K PNG screenshot 3840x2160", encode(screenshot(3840, 2160, 2), "PNG")),
        ("1MP WebP 1280x800", encode(photo(1280, 800, 3), "WEBP", quality=80)),
    ]
    print(f"{'input':30} {'MB':>5} {'grid':>10} {'fmt':>4} {'ours min/med ms':>16} {'naive min/med ms':>17}"
          f" {'speedup':>7} {'PSNR ours':>9} {'PSNR naive':>10} {'ours~naive':>10}")
    for name, data in cases:
        result = pipe.run(data)
        size = (result.info.width, result.info.height)
        ours_t = timed(lambda: pipe.run(data), args.repeats)
        naive_t = timed(lambda: naive(data, size), args.repeats)
        ref = Image.open(io.BytesIO(data)).convert("RGB").resize(size, Image.Resampling.LANCZOS)
        ours_img = Image.open(io.BytesIO(_payload(result.data_url))).convert("RGB")
        naive_img = Image.open(io.BytesIO(naive(data, size))).convert("RGB")
        print(f"{name:30} {len(data) / 1e6:5.2f} {size[0]:>4}x{size[1]:<5} {result.format:>4}"
              f" {ours_t[0]:7.1f}/{ours_t[1]:<8.1f} {naive_t[0]:8.1f}/{naive_t[1]:<8.1f}"
              f" {naive_t[0] / ours_t[0]:6.1f}x {psnr(ours_img, ref):8.2f}dB {psnr(naive_img, ref):9.2f}dB"
              f" {psnr(ours_img, naive_img):9.2f}dB")
        if result.format == "jpeg" and data[:2] == b"\xff\xd8":
            floor(data, size, args.repeats)


def floor(data: bytes, size: tuple[int, int], repeats: int) -> None:
    """Where a JPEG's time goes, each stage alone (best of N): what any full-quality path must pay."""
    import simplejpeg

    from vlgate.images import jpeg, resample

    w, h = Image.open(io.BytesIO(data)).size
    n = jpeg.scale_for((w, h), size)
    mh, mw = -(-h // n), -(-w // n)
    stages: list[tuple[str, Callable[[], object]]] = [
        (f"entropy+IDCT only (1/{n}, grey, no colour)",
         lambda: simplejpeg.decode_jpeg(data, colorspace="GRAY", min_height=mh, min_width=mw)),
        (f"decode 1/{n} (libjpeg-turbo, simplejpeg)", lambda: jpeg.decode(data, "RGB", (w, h), size)),
        (f"decode 1/{n} (Pillow draft)", lambda: _pillow_draft(data, size)),
    ]
    decoded = jpeg.decode(data, "RGB", (w, h), size)
    assert decoded is not None
    resized = resample.resize(decoded, size, "bilinear", None)
    stages += [
        ("resize bilinear (cykooz-resizer, SIMD)", lambda: resample.resize(decoded, size, "bilinear", None)),
        ("resize bilinear (Pillow)", lambda: decoded.resize(size, Image.Resampling.BILINEAR)),
        ("encode JPEG q90 (Pillow)", lambda: encode(resized, "JPEG", quality=90)),
    ]
    for name, fn in stages:
        print(f"    {name:44} {timed(fn, repeats)[0]:6.1f} ms")


def _pillow_draft(data: bytes, size: tuple[int, int]) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.draft("RGB", size)
    im.load()
    return im


def _payload(data_url: str) -> bytes:
    import base64

    return base64.b64decode(data_url.split(",", 1)[1])


if __name__ == "__main__":
    main()
