"""Image transforms of pipeline steps: the crop around a box that demo.py's `crop_and_resize` makes.

demo.py (TencentCloudADP/youtu-vl): crop = box size x 1.2 around the box centre, clamped to the image with
`int()`; the box is drawn on the crop (1 px, a random colour); the crop is resized (Lanczos) so its shorter
side is 1280; JPEG-encoded (OpenCV's default quality, 95). Here the colour comes from a seeded generator so
one request always produces the same crop.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from vlgate.presets.masks import index_map
from vlgate.presets.settings import CropSpec


@dataclass(frozen=True, slots=True)
class Crop:
    data: bytes  # the encoded crop the model is sent
    mime: str
    region: tuple[int, int, int, int]  # x1, y1, x2, y2 in the user's image (x2, y2 exclusive)
    size: tuple[int, int]  # the crop's pixel size after the resize


def crop_region(box: list[float], width: int, height: int, padding: float) -> tuple[int, int, int, int]:
    """demo.py: (x2-x1)*padding wide, same centre, clamped; `int()` truncates like the demo."""
    x1, y1, x2, y2 = box
    cw, ch = (x2 - x1) * padding, (y2 - y1) * padding
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    rx1, ry1 = max(int(cx - cw / 2), 0), max(int(cy - ch / 2), 0)
    rx2, ry2 = min(int(cx + cw / 2), width), min(int(cy + ch / 2), height)
    return rx1, ry1, max(rx2, rx1 + 1), max(ry2, ry1 + 1)  # never empty: a degenerate box still gives 1 px


def crop_around_box(image: Image.Image, box: list[float], spec: CropSpec, seed: int = 0) -> Crop:
    """The crop the model gets for one box (see module doc); `image` is the user's, upright, RGB."""
    region = crop_region(box, image.width, image.height, spec.padding)
    rx1, ry1 = region[:2]
    crop = image.crop(region)
    if spec.mark:
        x1, y1, x2, y2 = (int(box[0] - rx1), int(box[1] - ry1), int(box[2] - rx1), int(box[3] - ry1))
        rng = random.Random(seed)
        color = (rng.randint(0, 255), rng.randint(0, 255), rng.randint(0, 255))
        ImageDraw.Draw(crop).rectangle([x1, y1, x2, y2], outline=color, width=spec.mark_width)
    scale = spec.short_side / min(crop.width, crop.height)
    size = (max(1, int(crop.width * scale)), max(1, int(crop.height * scale)))
    crop = crop.resize(size, Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    if spec.format == "png":
        crop.save(buf, "PNG")
    else:
        crop.save(buf, "JPEG", quality=spec.quality)
    return Crop(buf.getvalue(), f"image/{spec.format}", region, size)


def stretch(cells: np.ndarray, width: int, height: int) -> np.ndarray:
    """A boolean grid resized nearest-neighbour to height x width (demo.py: cv2.INTER_NEAREST)."""
    gh, gw = cells.shape
    return cells[index_map(height, gh)][:, index_map(width, gw)]
