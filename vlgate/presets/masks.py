"""Run-length masks: semantic/referring segmentation and depth.

The model writes `<mask>(value,count)(value,count)…</mask>` row-major over a grid: the patch grid
(W'/16)×(H'/16) (depth always; segmentation usually) or, for segmentation, the full W'×H' grid.
Segmentation values index the `<ref>` labels in order. Outputs:
- masks: one per class value, as uncompressed COCO RLE at the ORIGINAL image size
  (`{"size": [H, W], "counts": [...]}`, column-major, counts start with a run of 0s; pycocotools'
  `frPyObjects` reads it), plus area and bbox in original pixels;
- depth: the grid as a 16-bit grayscale PNG data URL (grid resolution: stretch it over the image),
  with the raw min/max values.
"""

from __future__ import annotations

import base64
import io
import re
from typing import Any

import numpy as np
from PIL import Image

from vlgate.images.types import ImageInfo
from vlgate.presets.scan import blocks, refs

PATCH = 16
_PAIR_RE = re.compile(r"\(\s*(\d+)\s*,\s*(\d+)\s*\)")
_MAX_CELLS = 64 * 1024 * 1024  # a run-length total beyond this is nonsense (and a memory bomb)


def decode_rle(inner: str, errors: list[str]) -> np.ndarray:
    """`(v,n)(v,n)…` → flat values; also accepts a plain `v,v,v` list. Oversized input is cut."""
    pairs = _PAIR_RE.findall(inner)
    if not pairs:
        flat = re.findall(r"\d+", inner)
        if flat and "(" not in inner:
            return np.asarray([int(v) for v in flat], dtype=np.int64)
        if inner.strip():
            errors.append("mask: no (value,count) pairs")
        return np.zeros(0, dtype=np.int64)
    values = np.asarray([int(v) for v, _ in pairs], dtype=np.int64)
    counts = np.asarray([int(n) for _, n in pairs], dtype=np.int64)
    total = int(counts.sum())
    if total > _MAX_CELLS:
        errors.append(f"mask: {total} cells is implausible, cut to {_MAX_CELLS}")
        keep = np.cumsum(counts) <= _MAX_CELLS
        values, counts = values[keep], counts[keep]
    return np.repeat(values, counts)


def fit_grid(flat: np.ndarray, grids: list[tuple[int, int]], fill: int, errors: list[str]) -> np.ndarray:
    """Reshape to the first grid (w, h) whose size matches; otherwise pad/cut to the first grid."""
    for w, h in grids:
        if flat.size == w * h:
            return flat.reshape(h, w)
    w, h = grids[0]
    n = w * h
    if flat.size < n:
        errors.append(f"mask: {flat.size} of {n} cells ({w}x{h} grid), the rest left empty (truncated output?)")
        flat = np.concatenate([flat, np.full(n - flat.size, fill, dtype=flat.dtype)])
    else:
        errors.append(f"mask: {flat.size} cells for a {w}x{h} grid ({n}), extra cells dropped")
        flat = flat[:n]
    return flat.reshape(h, w)


def patch_grid(image: ImageInfo) -> tuple[int, int]:
    return max(1, image.width // PATCH), max(1, image.height // PATCH)


def _index_map(n_out: int, n_in: int) -> np.ndarray:
    """Nearest-neighbour source index of each output pixel (pixel centre → grid cell); labels never blend."""
    return np.minimum((2 * np.arange(n_out, dtype=np.int64) + 1) * n_in // (2 * n_out), n_in - 1)


def mask_rle(cells: np.ndarray, width: int, height: int) -> dict[str, Any]:
    """Uncompressed COCO RLE, area and bbox of a boolean grid mask stretched to width x height.

    Works column by column (COCO RLE is column-major) so a 12-megapixel image never materializes.
    """
    gh, gw = cells.shape
    rows, cols = _index_map(height, gh), _index_map(width, gw)
    col_masks = cells[rows, :]  # height x gw: each grid column stretched to full height
    starts = col_masks[0, :]
    ends = col_masks[-1, :]
    inner = [np.flatnonzero(col_masks[1:, j] != col_masks[:-1, j]) + 1 for j in range(gw)]
    edges: list[np.ndarray] = []
    for x, j in enumerate(cols):
        if x and ends[cols[x - 1]] != starts[j]:
            edges.append(np.array([x * height]))
        if inner[j].size:
            edges.append(inner[j] + x * height)
    bounds = np.concatenate([[0], *edges, [width * height]]) if edges else np.array([0, width * height])
    counts = np.diff(bounds).tolist()
    if width * height and starts[cols[0]]:
        counts = [0] + counts
    col_area = col_masks.sum(axis=0)
    ys = np.flatnonzero(cells.any(axis=1)[rows])
    xs = np.flatnonzero(cells.any(axis=0)[cols])
    bbox = [int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1] if xs.size else None
    return {"area": int(col_area[cols].sum()), "bbox": bbox, "rle": {"size": [height, width], "counts": counts}}


def parse_masks(text: str, image: ImageInfo | None) -> tuple[list[dict[str, Any]], list[str]]:
    """Segmentation masks → [{"label", "value", "area", "bbox", "rle"}] in original pixels (see module doc)."""
    errors: list[str] = []
    found = [b for b in blocks(text, "mask") if not _in_depth(text, b.start)]
    if not found:
        return [], errors
    if image is None:
        return [], ["no image size known: masks cannot be placed"]
    labels = [lab for _, lab in refs(text[: found[0].start])]
    out: list[dict[str, Any]] = []
    for i, b in enumerate(found):
        if not b.closed:
            errors.append(f"mask {i}: no </mask> (truncated output?)")
        flat = decode_rle(b.inner, errors)
        if flat.size == 0:
            continue
        pw, ph = patch_grid(image)
        grid = fit_grid(flat, [(pw, ph), (image.width, image.height)], -1, errors)
        for value in sorted(int(v) for v in np.unique(grid) if v >= 0):
            label = labels[value] if value < len(labels) else None
            if value >= len(labels):
                errors.append(f"mask {i}: value {value} has no <ref> label ({len(labels)} labels)")
            entry = {"label": label, "value": value, "grid": [int(grid.shape[1]), int(grid.shape[0])]}
            entry.update(mask_rle(grid == value, image.orig_width, image.orig_height))
            out.append(entry)
    return out, errors


def _in_depth(text: str, offset: int) -> bool:
    """A `<mask>` right after `<depth>` is a depth map, not a segmentation."""
    return text[:offset].rstrip().endswith("<depth>")


def png_data_url(grid: np.ndarray) -> str:
    """16-bit grayscale PNG of a 2-D array of 0..65535 values."""
    img = Image.fromarray(np.ascontiguousarray(grid.astype(np.uint16)))  # uint16 → mode "I;16"
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def parse_depth(text: str, image: ImageInfo | None) -> tuple[dict[str, Any] | None, list[str]]:
    """`<depth><mask>…</mask>` on the (W'/16)×(H'/16) grid → {"png", "width", "height", "min", "max", ...}."""
    errors: list[str] = []
    found = [b for b in blocks(text, "mask") if _in_depth(text, b.start)]
    if not found:
        if "<depth>" in text:
            errors.append("depth: <depth> without a <mask>")
        return None, errors
    if image is None:
        return None, ["no image size known: the depth grid cannot be shaped"]
    b = found[0]
    if not b.closed:
        errors.append("depth: no </mask> (truncated output?)")
    flat = decode_rle(b.inner, errors)
    if flat.size == 0:
        return None, errors + ["depth: empty mask"]
    if int(flat.max()) > 65535:
        errors.append("depth: values above 65535 clipped")
    flat = np.clip(flat, 0, 65535)
    gw, gh = patch_grid(image)
    grid = fit_grid(flat, [(gw, gh)], 0, errors)
    return {
        "png": png_data_url(grid),
        "width": gw,
        "height": gh,
        "min": int(flat.min()),
        "max": int(flat.max()),
        "image_width": image.orig_width,
        "image_height": image.orig_height,
    }, errors
