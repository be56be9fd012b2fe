"""Resize to the grid with SIMD convolution (cykooz-resizer: Rust fast_image_resize, AVX2/SSE4.1/Neon),
or with Pillow's resize where cykooz-resizer has no wheel.

Same filters and antialiasing as Pillow's resize (support widened by the scale factor; RGBA resized
premultiplied), about 5x faster on one core: it is the largest step of a photo's normalization after
decoding. Modes it does not handle (LA) go through Pillow.

Without cykooz-resizer (no wheel for Linux aarch64 or musl: pyproject.toml installs it only on glibc
x86_64 Linux, macOS and 64-bit Windows; `SIMD` is False) every resize is Pillow's, to the same exact
size with the same filter. Measured on this project's 2-core x86_64 VM (Pillow 13.0, cykooz-resizer
4.0.1, one core; tests/images/test_resample_fallback.py checks the grid and a 40 dB floor):

    quality, PSNR of Pillow's output against the SIMD output (same filter, same size):
      photo 2016x1512 -> 896x672: lanczos 54.9 dB, bicubic 55.2, bilinear 55.6, box 57.0 (mean |diff| 0.2
      levels, max 4); 2016x1512 -> 1632x1216 lanczos 53.1; 4032x3024 -> 1288x966 lanczos 55.7;
      RGBA over white 52.8; docs/*.png screenshots 64-71 dB; a synthetic text screenshot 1920x1080 ->
      1288x728 lanczos 45.3 dB (mean |diff| 0.36, a few ringing pixels up to 35 levels).
      Through the whole image path (re-encoded JPEG q95): 43-44 dB for photos, 53-77 dB for PNGs.
    speed, lanczos RGB (median of 7): 4032x3024 -> 1288x966 Pillow 280-400 ms vs SIMD 42-50 ms;
      2016x1512 -> 896x672 Pillow 111 ms vs 16 ms; screenshot 1920x1080 -> 1288x728 Pillow 84 ms vs 12 ms:
      6-9x slower, so a 12 MP photo's normalization takes ~0.25-0.35 s more of a core without the wheel.
"""

from __future__ import annotations

import threading
from typing import Any

from PIL import Image

try:
    from cykooz_resizer import CropBox, FilterType, ResizeAlg, ResizeOptions, Resizer
except ImportError:  # no wheel for this platform (Linux aarch64, musl): Pillow's resize, same sizes and filters
    SIMD = False
else:
    SIMD = True

_PILLOW = {
    "lanczos": Image.Resampling.LANCZOS,
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "box": Image.Resampling.BOX,
}
_OPTIONS: dict[str, Any] = {}
if SIMD:
    _FILTERS = {  # our names (Pillow's) -> the same kernels in fast_image_resize (Pillow's BICUBIC is Catmull-Rom)
        "lanczos": FilterType.lanczos3,
        "bicubic": FilterType.catmull_rom,
        "bilinear": FilterType.bilinear,
        "box": FilterType.box,
    }
    _OPTIONS = {name: ResizeOptions(resize_alg=ResizeAlg.convolution(f)) for name, f in _FILTERS.items()}
_SIMD_MODES = ("L", "RGB", "RGBA", "CMYK")
_local = threading.local()  # a Resizer keeps scratch buffers: one per worker thread


def resize(im: Image.Image, size: tuple[int, int], filter_name: str, reducing_gap: float | None) -> Image.Image:
    """`im` resized to `size` with the named filter; reduce() by an integer factor first while the ratio is
    at least `reducing_gap` (as Pillow's resize(reducing_gap=...) does)."""
    if im.size == size:
        return im
    im = reduced(im, size, reducing_gap)
    if not SIMD:
        out = im.resize(size, _PILLOW[filter_name])
        return out.convert("RGB") if out.mode == "RGBX" else out  # the decoder's RGBX: RGB, as below
    if im.mode == "RGBX":  # after reduce(): that returns a real RGBX image again
        im = _as_rgb(im)
    if im.mode not in _SIMD_MODES:
        return im.resize(size, _PILLOW[filter_name])
    out = Image.new(im.mode, size, None)  # zeroed by calloc: no fill pass
    _resizer().resize_pil(im, out, _OPTIONS[filter_name])
    return out


def reduced(im: Image.Image, size: tuple[int, int], reducing_gap: float | None) -> Image.Image:
    """The integer-factor reduce() that resize() does first (or `im` itself)."""
    if reducing_gap is not None:
        fx = max(1, int(im.width / size[0] / reducing_gap))
        fy = max(1, int(im.height / size[1] / reducing_gap))
        if fx > 1 or fy > 1:
            im = im.reduce((fx, fy))
    return im


def resize_rows(im: Image.Image, size: tuple[int, int], filter_name: str, rows: tuple[int, int]) -> Image.Image:
    """Rows [y0, y1) of resize(im, size) without reducing_gap, pixel for pixel (SIMD only, an RGB `im`): the
    source crop is exactly those rows' share and the filter still reads the pixels around it."""
    y0, y1 = rows
    scale = im.height / size[1]
    top, bottom = y0 * scale, (y1 * scale if y1 < size[1] else im.height)
    out = Image.new(im.mode, (size[0], y1 - y0), None)
    box = CropBox(0, top, im.width, min(bottom, im.height) - top)  # never past the edge by a rounding
    _resizer().resize_pil(im, out, ResizeOptions(resize_alg=_OPTIONS[filter_name].resize_alg, crop_box=box))
    return out


def _resizer() -> Resizer:
    resizer = getattr(_local, "resizer", None)
    if resizer is None:
        resizer = _local.resizer = Resizer()
    return resizer


def _as_rgb(im: Image.Image) -> Image.Image:
    """The same pixels seen as RGB: Pillow stores RGB as 4 bytes per pixel, exactly RGBX's layout, so the
    decoder's RGBX buffer is resized as RGB without a conversion pass (the padding byte is never read)."""
    view = Image.Image()._new(im.im)
    view._mode = "RGB"
    return view
