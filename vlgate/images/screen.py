"""Is this lossless image a screenshot (UI, text, diagram) that JPEG would smear, or a photo saved losslessly?

The measure: on every 8th row (full width), the share of pixels equal to their left neighbour, per tile of
64x64 px. A tile of UI or text is mostly flat runs broken by sharp, anti-aliased edges (0.7 <= share < 0.995);
a photo tile has sensor noise (share near 0, ~0.4 even after heavy blur); blank tiles (share ~1: empty
panels, a blown-out sky, letterbox bars) say nothing either way. Counting colours does not work: anti-aliased
text, gradients and icons give a real screenshot thousands of colours in a 256x256 sample.

Calibrated on synthetic 3840x2160 images (bench/images_bench.py's screenshot; tests/images/test_images_screen.py):
screenshots with TrueType anti-aliased text, light or dark, with a photo wallpaper: 18-32 % text tiles;
photos (noisy, smooth, blurred, a third clipped white): 0 %. 1-2.5 ms on a 4K image: one nearest-neighbour
row sample, then numpy on 32-bit pixels.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

ROW_STEP = 8  # sample every 8th row: flat runs are horizontal, rows far apart add nothing
TILE = 64  # tile side in pixels (TILE // ROW_STEP sampled rows per tile)
TEXT_MIN, BLANK_MIN = 0.7, 0.995  # tile flat share: [TEXT_MIN, BLANK_MIN) = UI/text; >= BLANK_MIN = blank


def text_tile_share(im: Image.Image) -> float:
    """Share of 64x64 tiles that look like UI or text (0..1); an image smaller than one tile is one tile."""
    eq = _flat(im)
    if eq is None:
        return 0.0
    rows, cols = eq.shape
    th, tw = max(1, min(rows, TILE // ROW_STEP)), max(1, min(cols, TILE))
    rows, cols = rows // th * th, cols // tw * tw
    flat = eq[:rows, :cols].reshape(rows // th, th, cols // tw, tw).sum(axis=(1, 3), dtype=np.int32)
    n = th * tw
    return float(((flat >= TEXT_MIN * n) & (flat < BLANK_MIN * n)).mean())


def _flat(im: Image.Image) -> np.ndarray | None:
    """Bool matrix: sampled pixel == its left neighbour (all channels), or None for a 1-px-wide image."""
    w, h = im.size
    if w < 2:
        return None
    rows = im.resize((w, max(1, h // ROW_STEP)), Image.Resampling.NEAREST) if h >= 2 * ROW_STEP else im
    if rows.mode in ("RGB", "RGBX", "RGBA", "CMYK"):  # one 32-bit word per pixel: one compare for all channels
        raw = rows.tobytes("raw", rows.mode if rows.mode != "RGB" else "RGBX")
        px = np.frombuffer(raw, "<u4").reshape(rows.height, w)
        if rows.mode in ("RGB", "RGBX"):
            px = px & np.uint32(0x00FFFFFF)  # the padding byte (read little-endian: the top one) is not pixel data
    elif rows.mode == "LA":
        px = np.frombuffer(rows.tobytes(), np.uint16).reshape(rows.height, w)
    else:
        px = np.asarray(rows.convert("L") if rows.mode != "L" else rows)
    return px[:, 1:] == px[:, :-1]
