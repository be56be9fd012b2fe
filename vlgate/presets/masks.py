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


def index_map(n_out: int, n_in: int) -> np.ndarray:
    """Nearest-neighbour source index of each output pixel (pixel centre → grid cell); labels never blend."""
    return np.minimum((2 * np.arange(n_out, dtype=np.int64) + 1) * n_in // (2 * n_out), n_in - 1)


def _pool_axis(cells: np.ndarray, size: int, axis: int) -> np.ndarray:
    """A grid axis longer than the image is OR-pooled down to `size` (every cell lands in some pixel)."""
    n = cells.shape[axis]
    if n <= size:
        return cells
    starts = (np.arange(size, dtype=np.int64) * n) // size
    return np.logical_or.reduceat(cells, starts, axis=axis)


def mask_rle(cells: np.ndarray, width: int, height: int) -> dict[str, Any]:
    """Uncompressed COCO RLE, area and tight bbox of a boolean grid mask stretched to width x height.

    Nearest-neighbour (classes stay a partition). A grid larger than the image (the full 512x384 grid of a
    500x375 image) skips some cells; a class found only there is OR-pooled instead, so it is never dropped.
    """
    cells = cells.astype(bool)
    out = _stretch_rle(cells, width, height)
    if out["area"] == 0 and cells.any():
        out = _stretch_rle(_pool_axis(_pool_axis(cells, height, 0), width, 1), width, height)
    return out


def _stretch_rle(cells: np.ndarray, width: int, height: int) -> dict[str, Any]:
    """Column by column (COCO RLE is column-major): a 12-megapixel image never materializes."""
    gh, gw = cells.shape
    rows, cols = index_map(height, gh), index_map(width, gw)
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
    used_cols = np.unique(cols)
    ys = np.flatnonzero(col_masks[:, used_cols].any(axis=1))  # rows of the stretched mask with a set pixel
    xs = np.flatnonzero(col_area[cols] > 0)  # columns of the stretched mask with a set pixel
    bbox = [int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1] if xs.size and ys.size else None
    return {"area": int(col_area[cols].sum()), "bbox": bbox, "rle": {"size": [height, width], "counts": counts}}


BACKGROUND = ("<BG>", "<OTHERS>")  # not objects: no mask of their own (demo.py drops <OTHERS> from class lists)


def _mask_grids(text: str, image: ImageInfo, errors: list[str]) -> list[tuple[int, list[str | None], np.ndarray]]:
    """(index, <ref>/<label> labels before it, value grid) of every segmentation `<mask>` (none in a depth answer)."""
    if "<depth>" in text:
        return []
    out = []
    for i, b in enumerate(blocks(text, "mask")):
        if not b.closed:
            errors.append(f"mask {i}: no </mask> (truncated output?)")
        flat = decode_rle(b.inner, errors)
        if flat.size == 0:
            continue
        pw, ph = patch_grid(image)
        grid = fit_grid(flat, [(pw, ph), (image.width, image.height)], -1, errors)
        out.append((i, [lab for _, lab in refs(text[: b.start])], grid))
    return out


def parse_masks(text: str, image: ImageInfo | None) -> tuple[list[dict[str, Any]], list[str]]:
    """Segmentation masks → [{"label", "value", "area", "bbox", "rle"}] in original pixels (see module doc).

    Values index the labels in order; `<BG>`/`<OTHERS>` cells and, in an answer without labels, value 0 are
    background (no mask). `<FG>` labels the core target whatever its value (demo.py flips `<FG>`-first answers).
    """
    errors: list[str] = []
    if "<mask>" not in text or "<depth>" in text:
        return [], errors
    if image is None:
        return [], ["no image size known: masks cannot be placed"]
    out: list[dict[str, Any]] = []
    for i, labels, grid in _mask_grids(text, image, errors):
        for value in sorted(int(v) for v in np.unique(grid) if v >= 0):
            label = labels[value] if value < len(labels) else None
            if label in BACKGROUND or (not labels and value == 0):
                continue
            if labels and value >= len(labels):
                errors.append(f"mask {i}: value {value} has no <ref> label ({len(labels)} labels)")
            entry = {"label": label, "value": value, "grid": [int(grid.shape[1]), int(grid.shape[0])]}
            entry.update(mask_rle(grid == value, image.orig_width, image.orig_height))
            out.append(entry)
    return out, errors


def core_target(text: str, image: ImageInfo) -> tuple[np.ndarray | None, list[str]]:
    """The core-target cells of a `Segment the core target.` answer on its grid (demo.py parse_prediction_string).

    The target is the `<FG>` value when labels are given (`<ref><FG></ref><ref><BG></ref>` → 0), else value 1.
    """
    errors: list[str] = []
    grids = _mask_grids(text, image, errors)
    if not grids:
        return None, errors + ["core target: no <mask> in the answer"]
    _, labels, grid = grids[0]
    target = labels.index("<FG>") if "<FG>" in labels else 1
    return grid == target, errors


def png_data_url(grid: np.ndarray) -> str:
    """16-bit grayscale PNG of a 2-D array of 0..65535 values."""
    img = Image.fromarray(np.ascontiguousarray(grid.astype(np.uint16)))  # uint16 → mode "I;16"
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def parse_depth(text: str, image: ImageInfo | None) -> tuple[dict[str, Any] | None, list[str]]:
    """`<depth>` and a `<mask>…</mask>` (any order) on the (W'/16)×(H'/16) grid → {"png", "width", "height", "min",
    "max", ...}. Values are the model's quantized depth codes per grid cell, not metres (vis.py only min-max
    normalizes them for display; "the paper applies extra dequantization", which is not published)."""
    errors: list[str] = []
    found = blocks(text, "mask") if "<depth>" in text else []  # vis.py: both tags present, in any order
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
