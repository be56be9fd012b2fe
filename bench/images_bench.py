"""Image normalization: vlgate's pipeline vs the naive Pillow path, per image; the screenshot path; threads.

    python bench/images_bench.py [--repeats 7] [--quick] [--markdown PATH] [--jpeg-stages]

Inputs are generated (seeded): a 12 MP phone-like JPEG (shapes with sharp edges, texture, gradients, sensor
noise, q92 4:2:0), a 4K PNG screenshot (gradients, icons, coloured anti-aliased TrueType text: thousands of
colours), a 4K photo saved as PNG and a 1 MP lossy WebP photo. "naive" is open -> convert("RGB") ->
resize(LANCZOS) -> save JPEG q90 to the same grid size. Quality: PSNR of each output (decoded) against a
float-free reference: the full-resolution decode resized with LANCZOS, unencoded. Candidates are timed
interleaved in one process (the machine's speed drifts); thread scaling runs the pipeline in a
ThreadPoolExecutor of 1 and 2 workers, as the normalizer's decode pool does.
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from vlgate.images.decode import available_formats, keep_pixel_memory
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
    """A desktop as a screenshot tool saves it: gradient background, windows with gradient title bars, icons,
    coloured anti-aliased TrueType text in several sizes, a photo thumbnail (thousands of colours in a
    256x256 sample, like real screenshots)."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
    bg = np.array((243, 244, 246), np.float32) * (1 - t) + np.array((90, 120, 180), np.float32) * t
    img = Image.fromarray(np.broadcast_to(bg, (height, width, 3)).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    words = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "error", "config", "gateway", "image",
             "token", "model", "0123456789"]
    inks = [(20, 20, 20), (170, 30, 30), (30, 110, 200), (40, 140, 60), (120, 60, 160), (200, 120, 0)]
    for _ in range(7):
        x0, y0 = int(rng.integers(0, width // 2)), int(rng.integers(0, height // 2))
        x1, y1 = x0 + int(rng.integers(width // 4, width // 2)), y0 + int(rng.integers(height // 4, height // 2))
        draw.rounded_rectangle((x0, y0, x1, y1), 12, fill=(255, 255, 255), outline=(120, 120, 130))
        ramp = np.linspace(0, 1, x1 - x0, dtype=np.float32)[None, :, None]
        bar = np.array((50, 80, 150)) * (1 - ramp) + np.array((90, 140, 210)) * ramp
        img.paste(Image.fromarray(np.broadcast_to(bar, (34, x1 - x0, 3)).astype(np.uint8)), (x0, y0))
        draw.text((x0 + 10, y0 + 6), "Window " + " ".join(rng.choice(words, 3)), fill=(255, 255, 255), font=_font(20))
        for k in range(4):
            cx, cy = x0 + 20 + 40 * k, y0 + 50
            draw.ellipse((cx, cy, cx + 28, cy + 28), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        size = int(rng.integers(14, 26))
        for line_y in range(y0 + 90, y1 - size - 4, size + 8):
            text = " ".join(rng.choice(words, int(rng.integers(4, 14))))
            draw.text((x0 + 12, line_y), text, fill=inks[int(rng.integers(0, len(inks)))], font=_font(size))
    img.paste(photo(width // 6, height // 6, seed + 7), (width - width // 5, height - height // 5))
    return img


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """DejaVu Sans when installed, else Pillow's built-in font (FreeType, anti-aliased too)."""
    try:
        return ImageFont.truetype("DejaVuSans.ttf", size)
    except OSError:
        return ImageFont.load_default(size=size)


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


def interleaved(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, tuple[float, float]]:
    """(min, median) ms of each fn, run round-robin so that machine drift hits every candidate alike."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()  # warm-up
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t) * 1000)
    return {name: (min(ts), statistics.median(ts)) for name, ts in times.items()}


def pipeline(**encode_settings: object) -> Pipeline:
    """The gateway's pipeline with these `images.encode` settings (and its Pillow block cache)."""
    s = ImageSettings.model_validate({"encode": encode_settings})
    keep_pixel_memory(s.pillow_block_cache_mb)
    return Pipeline(s.grid.to_rule(), tuple(available_formats(s.formats)), s.limits, s.encode)


def block_cache_effect(data: bytes, repeats: int) -> list[str]:
    """The screenshot with and without Pillow's block cache. Not interleaved per call (switching the cache off
    empties it): alternating batches of `repeats` runs, three of each."""
    p = pipeline()
    times: dict[int, list[float]] = {0: [], 128: []}
    for _ in range(3):
        for mb, ts in times.items():
            keep_pixel_memory(mb)
            p.run(data)
            for _ in range(repeats):
                t = time.perf_counter()
                p.run(data)
                ts.append((time.perf_counter() - t) * 1000)
    keep_pixel_memory(ImageSettings().pillow_block_cache_mb)
    return ["| screenshot, default path | min / median ms |", "|---|---|"] + [
        f"| images.pillow_block_cache_mb: {mb} | {min(ts):.1f} / {statistics.median(ts):.1f} |"
        for mb, ts in times.items()]


def machine() -> str:
    with open("/proc/cpuinfo") as f:
        model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")
    return f"{model}, {os.cpu_count()} cores visible, {len(os.sched_getaffinity(0))} usable by this process"


def inputs() -> list[tuple[str, bytes]]:
    return [
        ("12 MP JPEG 4032x3024", encode(photo(4032, 3024, 1), "JPEG", quality=92)),
        ("4K PNG screenshot 3840x2160", encode(screenshot(3840, 2160, 2), "PNG", compress_level=6)),
        ("4K PNG photo 3840x2160", encode(photo(3840, 2160, 4), "PNG", compress_level=6)),
        ("1 MP WebP 1280x800", encode(photo(1280, 800, 3), "WEBP", quality=80)),
    ]


def per_input(cases: list[tuple[str, bytes]], repeats: int, pipe: Pipeline) -> list[str]:
    out = [("| input | MB | grid | sent as | sent kB | vlgate min / median ms | naive min / median ms"
            " | PSNR vlgate / naive |"),
           "|---|---|---|---|---|---|---|---|"]
    for name, data in cases:
        result = pipe.run(data)
        size = (result.info.width, result.info.height)
        t = interleaved({"ours": lambda d=data: pipe.run(d), "naive": lambda d=data, s=size: naive(d, s)}, repeats)
        ref = Image.open(io.BytesIO(data)).convert("RGB").resize(size, Image.Resampling.LANCZOS)
        naive_psnr = psnr(Image.open(io.BytesIO(naive(data, size))), ref)
        ours, theirs = t["ours"], t["naive"]
        out.append(f"| {name} | {len(data) / 1e6:.2f} | {size[0]}x{size[1]} | {result.format}"
                   f" | {len(result.data_url) // 1000} | {ours[0]:.1f} / {ours[1]:.1f}"
                   f" | {theirs[0]:.1f} / {theirs[1]:.1f}"
                   f" | {psnr(decoded(result.data_url), ref):.2f} / {naive_psnr:.2f} dB |")
    return out


def pillow_png(fn: Callable[[], object]) -> Callable[[], object]:
    """`fn` with the libdeflate PNG path switched off: Pillow decodes every PNG (the code before it existed)."""
    from vlgate.images import png

    def run() -> object:
        real = png.decode
        png.decode = lambda im, data: None  # type: ignore[assignment]
        try:
            return fn()
        finally:
            png.decode = real

    return run


def one_band(fn: Callable[[], object]) -> Callable[[], object]:
    """`fn` with band splitting off (images/split.py): all of one image on one core, as before bands existed."""
    from vlgate.images import split

    def run() -> object:
        real = split.cpus
        split.cpus = lambda: 1  # type: ignore[assignment]
        try:
            return fn()
        finally:
            split.cpus = real

    return run


def screenshot_variants(data: bytes, repeats: int) -> list[str]:
    """Before/after for the screenshot, in one interleaved run: the old colour-count rule (JPEG), PNG, TGA; with
    Pillow's PNG decode and with the libdeflate one."""
    old_rule, as_png, default = pipeline(lossless_min_text_tiles=0), pipeline(lossless_format="png"), pipeline()
    runs: dict[str, tuple[Pipeline, bool]] = {
        "before: Pillow decode, colours > png_max_colors -> JPEG": (old_rule, False),
        "Pillow decode, lossless as PNG level 1 (the few-colour path before)": (as_png, False),
        "Pillow decode, lossless as TGA RLE": (default, False),
        "libdeflate decode, lossless as PNG level 1": (as_png, True),
        "libdeflate decode, lossless as TGA RLE, one core (no bands)": (default, True),
        "after: libdeflate decode, TGA RLE, in bands on the idle cores (default)": (default, True),
    }
    fns = {name: (lambda p=p: p.run(data)) if fast else pillow_png(lambda p=p: p.run(data))
           for name, (p, fast) in runs.items()}
    fns = {name: one_band(fn) if "one core" in name else fn for name, fn in fns.items()}
    t = interleaved(fns, repeats)
    first = old_rule.run(data)
    ref = Image.open(io.BytesIO(data)).convert("RGB").resize((first.info.width, first.info.height),
                                                             Image.Resampling.LANCZOS)
    out = ["| screenshot path | sent as | data URL kB | min / median ms | PSNR vs LANCZOS reference |",
           "|---|---|---|---|---|"]
    for name, (p, _) in runs.items():
        r = p.run(data)
        out.append(f"| {name} | {r.format} | {len(r.data_url) // 1000} | {t[name][0]:.1f} / {t[name][1]:.1f}"
                   f" | {psnr(decoded(r.data_url), ref):.2f} dB |")
    return out


def screenshot_stages(data: bytes, repeats: int) -> list[str]:
    """Each step of the screenshot path alone, interleaved (median ms)."""
    from vlgate.images import png, resample, screen

    im = Image.open(io.BytesIO(data))
    im.load()
    size = pipeline().run(data).info
    target = (size.width, size.height)
    small = resample.resize(im, target, "lanczos", None)
    grid = f"{target[0]}x{target[1]}"
    stages: dict[str, Callable[[], object]] = {
        "PNG decode 3840x2160 (Pillow, zlib-ng)": lambda: Image.open(io.BytesIO(data)).load(),
        "PNG decode 3840x2160 (libdeflate + Pillow's unfilter, png.py), one core":
            one_band(lambda: png.decode(Image.open(io.BytesIO(data)), data)),
        "PNG decode 3840x2160 (png.py), in bands on the idle cores":
            lambda: png.decode(Image.open(io.BytesIO(data)), data),
        "screenshot test (screen.text_tile_share)": lambda: screen.text_tile_share(im),
        "old test: colour count of a 256x256 sample":
            lambda: im.resize((256, 256), Image.Resampling.NEAREST).getcolors(512),
        f"resize to {grid} LANCZOS (cykooz-resizer)": lambda: resample.resize(im, target, "lanczos", None),
        f"resize to {grid} bilinear (cykooz-resizer)": lambda: resample.resize(im, target, "bilinear", None),
        "encode PNG level 1 (Pillow)": lambda: encode(small, "PNG", compress_level=1),
        "encode TGA RLE (Pillow)": lambda: encode(small, "TGA", compression="tga_rle"),
        "encode JPEG q90 (Pillow)": lambda: encode(small, "JPEG", quality=90),
    }
    t = interleaved(stages, repeats)
    return ["| screenshot stage | median ms |", "|---|---|"] + [f"| {n} | {v[1]:.1f} |" for n, v in t.items()]


def thread_scaling(cases: list[tuple[str, bytes]], batch: int, pipe: Pipeline) -> list[str]:
    """images/s through a ThreadPoolExecutor of 1 and 2 workers (the normalizer's decode pool)."""
    out = ["| input | 1 thread img/s | 2 threads img/s | scaling |", "|---|---|---|---|"]
    for name, data in cases:
        rate = {}
        for workers in (1, 2):
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(pipe.run, [data] * workers))  # warm-up: one Resizer per thread
                t = time.perf_counter()
                list(pool.map(pipe.run, [data] * batch))
                rate[workers] = batch / (time.perf_counter() - t)
        out.append(f"| {name} | {rate[1]:.1f} | {rate[2]:.1f} | {rate[2] / rate[1]:.2f}x |")
    return out


def jpeg_stages(data: bytes, pipe: Pipeline, repeats: int) -> list[str]:
    """Where a JPEG's time goes, each stage alone: what any full-quality path must pay."""
    import simplejpeg

    from vlgate.images import jpeg, resample

    info = pipe.run(data).info
    size, (w, h) = (info.width, info.height), (info.orig_width, info.orig_height)
    n = jpeg.scale_for((w, h), size)
    decoded_ = jpeg.decode(data, "RGB", (w, h), size)
    assert decoded_ is not None
    resized = resample.resize(decoded_, size, "bilinear", None)
    mh, mw = -(-h // n), -(-w // n)
    stages: dict[str, Callable[[], object]] = {
        f"entropy+IDCT only (1/{n}, grey, no colour)":
            lambda: simplejpeg.decode_jpeg(data, colorspace="GRAY", min_height=mh, min_width=mw),
        f"decode 1/{n} (libjpeg-turbo, simplejpeg)": lambda: jpeg.decode(data, "RGB", (w, h), size),
        "resize bilinear (cykooz-resizer, SIMD)": lambda: resample.resize(decoded_, size, "bilinear", None),
        "resize bilinear (Pillow)": lambda: decoded_.resize(size, Image.Resampling.BILINEAR),
        "encode JPEG q90 (Pillow)": lambda: encode(resized, "JPEG", quality=90),
    }
    t = interleaved(stages, repeats)
    return ["| 12 MP JPEG stage | min ms |", "|---|---|"] + [f"| {k} | {v[0]:.1f} |" for k, v in t.items()]


def decoded(data_url: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))).convert("RGB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="3 repeats, smaller thread batch: under a minute")
    ap.add_argument("--markdown", metavar="PATH", help="also write the results as a markdown section")
    ap.add_argument("--jpeg-stages", action="store_true", help="also time each stage of the 12 MP JPEG alone")
    args = ap.parse_args()
    repeats, batch = (3, 4) if args.quick else (args.repeats, 8)
    started = time.time()
    pipe = pipeline()
    cases = inputs()
    shot = dict(cases)["4K PNG screenshot 3840x2160"]
    e = pipe.encode
    lines = [
        "## Image normalization",
        "",
        (f"How measured: `python bench/images_bench.py{' --quick' if args.quick else ''}`, one process, candidates"
         f" interleaved, min / median of {repeats} runs per image (one thread unless stated); naive = Pillow open,"
         " convert, LANCZOS, JPEG q90; PSNR against the full decode resized with LANCZOS."),
        (f"Machine: {machine()}. Settings: resample={e.resample} resample_text={e.resample_text}"
         f" lossless_format={e.lossless_format} jpeg_quality={e.jpeg_quality}."),
        "",
        *per_input(cases, repeats, pipe),
        "",
        *screenshot_variants(shot, repeats),
        "",
        *block_cache_effect(shot, repeats),
        "",
        *screenshot_stages(shot, repeats),
        "",
        *thread_scaling([cases[0], cases[1]], batch, pipe),
        "",
        *(jpeg_stages(cases[0][1], pipe, repeats) + [""] if args.jpeg_stages else []),
        f"({time.time() - started:.0f} s)",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
