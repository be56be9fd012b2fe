"""`vlgate.overlay`: a picture of a preset's result over the user's image, drawn with Pillow.

What is drawn follows the official visualizer (demo/vis.py) in spirit: translucent masks (50 %), polygons,
boxes with a label on a filled tag, MPII skeletons (left limbs light blue, right orange, centre grey; visible
joints blue, hidden red; threshold 0.5), and depth as a colour map (magma, min-max normalized as vis.py does)
placed beside the image rather than over it. Everything comes from the extension dict, so coordinates are
already the user's pixels; the picture keeps the image's upright orientation and aspect, capped in size.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

MAX_SIDE = 1024
MASK_ALPHA = 0.5  # vis.py blends masks 0.5 / 0.5
POLY_ALPHA = 0.4  # vis.py: polygon overlay 0.4
GAP = 8  # pixels between the image and its depth map

# vis.py's MPII skeleton and colours, as its saved pictures show them (it draws its tuples into an RGB array)
SKELETON: dict[str, tuple[tuple[int, int], ...]] = {
    "left": ((5, 4), (4, 3), (3, 6), (13, 14), (14, 15)),
    "right": ((0, 1), (1, 2), (2, 6), (12, 11), (11, 10)),
    "center": ((6, 7), (7, 8), (8, 9), (13, 12)),
}
LIMB_COLORS = {"left": (102, 204, 255), "right": (255, 153, 102), "center": (160, 160, 160)}
JOINT_VISIBLE, JOINT_HIDDEN = (0, 0, 255), (255, 0, 0)
_MAGMA = np.array([(0, 0, 4), (28, 16, 68), (79, 18, 123), (129, 37, 129), (181, 54, 122), (229, 80, 100),
                   (251, 135, 97), (254, 194, 135), (252, 253, 191)], dtype=np.float64)


def palette(i: int) -> tuple[int, int, int]:
    """vis.py's golden-angle HSV palette."""
    h, s, v = (i * 137.508) % 360, 0.7 + (i % 3) * 0.1, 0.9 - (i % 4) * 0.1
    c = v * s
    x = c * (1 - abs((h / 60) % 2 - 1))
    m = v - c
    r, g, b = [(c, x, 0), (x, c, 0), (0, c, x), (0, x, c), (x, 0, c), (c, 0, x)][int(h // 60) % 6]
    return int((r + m) * 255), int((g + m) * 255), int((b + m) * 255)


def decode_rle(rle: dict[str, Any]) -> np.ndarray:
    """Uncompressed column-major COCO RLE → H x W bool."""
    h, w = rle["size"]
    counts = np.asarray(rle["counts"], dtype=np.int64)
    values = np.arange(counts.size) % 2 == 1
    return np.repeat(values, counts).reshape(w, h).T


def _outline(sel: np.ndarray, width: int) -> np.ndarray:
    """The pixels of `sel` within `width` of its edge (sel minus its erosion)."""
    inner = sel.copy()
    for _ in range(width):
        shrunk = inner.copy()
        shrunk[1:, :] &= inner[:-1, :]
        shrunk[:-1, :] &= inner[1:, :]
        shrunk[:, 1:] &= inner[:, :-1]
        shrunk[:, :-1] &= inner[:, 1:]
        inner = shrunk
    return sel & ~inner


def magma(values: np.ndarray) -> np.ndarray:
    """Min-max normalized values → RGB uint8 (a magma-like ramp)."""
    v = values.astype(np.float64)
    span = float(v.max() - v.min())
    t = (v - v.min()) / span if span > 0 else np.zeros_like(v)
    pos = t * (len(_MAGMA) - 1)
    lo = np.floor(pos).astype(int).clip(0, len(_MAGMA) - 2)
    frac = (pos - lo)[..., None]
    return (_MAGMA[lo] * (1 - frac) + _MAGMA[lo + 1] * frac).round().astype(np.uint8)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (OSError, TypeError, ValueError):  # no FreeType: the bitmap font
        return ImageFont.load_default()


class Painter:
    """Draws one extension dict onto a scaled copy of the image."""

    def __init__(self, image: Image.Image, orig_size: tuple[int, int], max_side: int) -> None:
        w, h = orig_size
        self.scale = min(1.0, max_side / max(w, h))
        size = (max(1, round(w * self.scale)), max(1, round(h * self.scale)))
        self.image = image.convert("RGB").resize(size, Image.Resampling.BILINEAR)
        self.line = max(2, round(max(size) / 400))
        self.colors: dict[str | None, tuple[int, int, int]] = {}
        self.font = _font(max(11, round(max(size) / 60)))

    def color(self, label: str | None) -> tuple[int, int, int]:
        """One palette colour per label, in order of first appearance (distinct within a picture)."""
        if label not in self.colors:
            self.colors[label] = palette(len(self.colors))
        return self.colors[label]

    def xy(self, x: float, y: float) -> tuple[float, float]:
        return x * self.scale, y * self.scale

    def masks(self, masks: list[dict[str, Any]], tags: bool) -> None:
        """Translucent fill and a solid outline (visible on any background); tags unless boxes carry them."""
        arr = np.asarray(self.image, dtype=np.float64)
        for m in masks:
            cells = Image.fromarray(decode_rle(m["rle"]).astype(np.uint8) * 255).resize(self.image.size,
                                                                                       Image.Resampling.NEAREST)
            sel = np.asarray(cells) > 127
            color = np.array(self.color(m.get("label")))
            arr[sel] = arr[sel] * (1 - MASK_ALPHA) + color * MASK_ALPHA
            arr[_outline(sel, max(1, self.line // 2))] = color
        self.image = Image.fromarray(arr.round().astype(np.uint8))
        for m in masks:
            if tags and m.get("bbox") and m.get("label"):
                self.tag(m["label"], self.xy(m["bbox"][0], m["bbox"][1]), self.color(m["label"]), inside=True)

    def polygons(self, polygons: list[dict[str, Any]], fill: bool) -> None:
        """Outlines, filled translucently unless masks already show the area."""
        if fill:
            layer = self.image.copy()
            draw = ImageDraw.Draw(layer)
            for p in polygons:
                draw.polygon([self.xy(x, y) for x, y in p["points"]], fill=self.color(p.get("label")))
            self.image = Image.blend(self.image, layer, POLY_ALPHA)
        draw = ImageDraw.Draw(self.image)
        for p in polygons:
            pts = [self.xy(x, y) for x, y in p["points"]]
            draw.line(pts + pts[:1], fill=self.color(p.get("label")), width=self.line)

    def boxes(self, boxes: list[dict[str, Any]]) -> None:
        draw = ImageDraw.Draw(self.image)
        for b in boxes:
            x1, y1 = self.xy(b["bbox"][0], b["bbox"][1])
            x2, y2 = self.xy(b["bbox"][2], b["bbox"][3])
            draw.rectangle([x1, y1, x2, y2], outline=self.color(b.get("label")), width=self.line)
        for b in boxes:
            if b.get("label"):
                self.tag(b["label"], self.xy(b["bbox"][0], b["bbox"][1]), self.color(b["label"]))

    def points(self, points: list[dict[str, Any]]) -> None:
        draw = ImageDraw.Draw(self.image)
        r = self.line * 2
        for p in points:
            x, y = self.xy(*p["point"])
            draw.ellipse([x - r, y - r, x + r, y + r], fill=self.color(p.get("label")), outline=(255, 255, 255))

    def persons(self, persons: list[dict[str, Any]]) -> None:
        draw = ImageDraw.Draw(self.image)
        r = self.line * 2
        for person in persons:
            if person.get("bbox"):
                x1, y1 = self.xy(*person["bbox"][:2])
                x2, y2 = self.xy(*person["bbox"][2:])
                draw.rectangle([x1, y1, x2, y2], outline=LIMB_COLORS["center"], width=max(1, self.line // 2))
            kps = person.get("keypoints") or []
            for part, pairs in SKELETON.items():
                for i, j in pairs:
                    if i < len(kps) and j < len(kps):
                        draw.line([self.xy(kps[i]["x"], kps[i]["y"]), self.xy(kps[j]["x"], kps[j]["y"])],
                                  fill=LIMB_COLORS[part], width=self.line + 1)
            for k in kps:
                x, y = self.xy(k["x"], k["y"])
                draw.ellipse([x - r, y - r, x + r, y + r], fill=JOINT_VISIBLE if k.get("visible") else JOINT_HIDDEN)

    def tag(self, text: str, at: tuple[float, float], color: tuple[int, int, int], inside: bool = False) -> None:
        """A label on a filled tag above the point (below it when there is no room, or `inside`)."""
        draw = ImageDraw.Draw(self.image)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=self.font)
        tw, th = right - left + 6, bottom - top + 4
        x = min(max(0.0, at[0]), max(0.0, self.image.width - tw))
        y = at[1] + self.line if inside or at[1] - th < 0 else at[1] - th
        draw.rectangle([x, y, x + tw, y + th], fill=color)
        luminance = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
        draw.text((x + 3 - left, y + 2 - top), text, fill=(0, 0, 0) if luminance > 160 else (255, 255, 255),
                  font=self.font)

    def depth_beside(self, depth: dict[str, Any]) -> None:
        raw = base64.b64decode(depth["png"].split(",", 1)[1])
        grid = np.asarray(Image.open(io.BytesIO(raw)), dtype=np.float64)
        colored = Image.fromarray(magma(grid)).resize(self.image.size, Image.Resampling.BILINEAR)
        canvas = Image.new("RGB", (self.image.width * 2 + GAP, self.image.height), (255, 255, 255))
        canvas.paste(self.image, (0, 0))
        canvas.paste(colored, (self.image.width + GAP, 0))
        self.image = canvas


def draw(image: Image.Image, ext: dict[str, Any], orig_size: tuple[int, int], *, photo: bool,
         max_side: int = MAX_SIDE) -> str:
    """The overlay data URL for `ext` over `image` (upright; any size, shown at the original aspect)."""
    p = Painter(image, orig_size, max_side)
    if ext.get("masks"):
        p.masks(ext["masks"], tags=not ext.get("boxes"))
    if ext.get("polygons"):
        p.polygons(ext["polygons"], fill=not ext.get("masks"))
    if ext.get("boxes"):
        p.boxes(ext["boxes"])
    if ext.get("points"):
        p.points(ext["points"])
    if ext.get("persons"):
        p.persons(ext["persons"])
    if ext.get("depth"):
        p.depth_beside(ext["depth"])
    buf = io.BytesIO()
    if photo:
        p.image.save(buf, "JPEG", quality=85)
    else:
        p.image.save(buf, "PNG")
    return f"data:image/{'jpeg' if photo else 'png'};base64," + base64.b64encode(buf.getvalue()).decode()
