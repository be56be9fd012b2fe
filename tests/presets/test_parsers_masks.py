"""Golden tests for run-length segmentation masks and depth maps."""

from __future__ import annotations

import base64
import io
from fractions import Fraction

import numpy as np
from PIL import Image

from vlgate.images.types import ImageInfo
from vlgate.presets import parse_depth, parse_masks


def img(w: int, h: int, mw: int, mh: int) -> ImageInfo:
    return ImageInfo(sha256="0" * 64, orig_width=w, orig_height=h, width=mw, height=mh)


def rle_text(flat: list[int]) -> str:
    runs = []
    for v in flat:
        if runs and runs[-1][0] == v:
            runs[-1][1] += 1
        else:
            runs.append([v, 1])
    return "".join(f"({v},{n})" for v, n in runs)


def decode_coco(rle: dict) -> np.ndarray:
    """Independent COCO RLE decoder: column-major runs starting with zeros."""
    h, w = rle["size"]
    flat = np.zeros(h * w, dtype=bool)
    pos, val = 0, False
    for n in rle["counts"]:
        flat[pos : pos + n] = val
        pos += n
        val = not val
    assert pos == h * w
    return flat.reshape(w, h).T


def nearest(grid: np.ndarray, w: int, h: int) -> np.ndarray:
    """Independent nearest-neighbour resize: each pixel centre takes the grid cell it falls in (exact fractions)."""
    gh, gw = grid.shape
    out = np.zeros((h, w), dtype=grid.dtype)
    for y in range(h):
        for x in range(w):
            out[y, x] = grid[int(Fraction(2 * y + 1, 2 * h) * gh), int(Fraction(2 * x + 1, 2 * w) * gw)]
    return out


def test_semantic_masks_patch_grid_to_original_pixels():
    image = img(300, 200, 64, 48)  # patch grid 4 x 3
    grid = np.array([[0, 0, 1, 1], [0, 2, 2, 1], [0, 0, 0, 0]])
    text = "<ref>sky</ref><ref>tree</ref><ref>road</ref><mask>" + rle_text(grid.reshape(-1).tolist()) + "</mask>"
    masks, errors = parse_masks(text, image)
    assert errors == []
    assert [(m["label"], m["value"]) for m in masks] == [("sky", 0), ("tree", 1), ("road", 2)]
    expect_full = nearest(grid, 300, 200)
    for m in masks:
        decoded = decode_coco(m["rle"])
        assert decoded.shape == (200, 300)
        assert np.array_equal(decoded, expect_full == m["value"])
        assert m["area"] == int((expect_full == m["value"]).sum())
        assert m["grid"] == [4, 3]
    ys, xs = np.nonzero(expect_full == 2)
    assert masks[2]["bbox"] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def test_referring_mask_full_model_grid():
    image = img(20, 10, 32, 16)  # full model grid 32 x 16 = 512 cells (patch grid would be 2 x 1)
    grid = np.zeros((16, 32), dtype=int)
    grid[4:12, 8:24] = 1
    masks, errors = parse_masks("<ref><BG></ref><ref><FG></ref><mask>" + rle_text(grid.reshape(-1).tolist()), image)
    assert errors == ["mask 0: no </mask> (truncated output?)"]
    fg = next(m for m in masks if m["label"] == "<FG>")
    assert np.array_equal(decode_coco(fg["rle"]), nearest(grid, 20, 10) == 1)
    assert fg["bbox"] == [5, 2, 15, 7]  # rows 2..6 sample grid rows 4..10; cols 5..14 sample 8..23


def test_mask_truncated_runs_are_padded_and_reported():
    image = img(64, 64, 64, 64)  # patch grid 4 x 4 = 16 cells
    masks, errors = parse_masks("<ref>a</ref><ref>b</ref><mask>(0,5)(1,3)</mask>", image)
    assert errors == ["mask: 8 of 16 cells (4x4 grid), the rest left empty (truncated output?)"]
    a, b = masks
    assert (a["label"], a["area"]) == ("a", 5 * 16 * 16)
    assert (b["label"], b["area"]) == ("b", 3 * 16 * 16)


def test_mask_too_long_and_unknown_class_value():
    image = img(32, 32, 32, 32)  # 2 x 2
    masks, errors = parse_masks("<ref>a</ref><mask>(0,2)(5,3)</mask>", image)
    assert errors == [
        "mask: 5 cells for a 2x2 grid (4), extra cells dropped",
        "mask 0: value 5 has no <ref> label (1 labels)",
    ]
    assert [(m["label"], m["value"], m["area"]) for m in masks] == [("a", 0, 512), (None, 5, 512)]


def test_mask_garbage_never_raises():
    image = img(32, 32, 32, 32)
    for text in ["<mask></mask>", "<mask>(a,b)</mask>", "<mask>(1,", "<ref>x</ref><mask>(0,99999999999)</mask>"]:
        masks, errors = parse_masks(text, image)
        assert isinstance(masks, list) and isinstance(errors, list)
    masks, errors = parse_masks("<mask>(0,1)</mask>", None)
    assert masks == [] and errors == ["no image size known: masks cannot be placed"]


def _png(data_url: str) -> np.ndarray:
    assert data_url.startswith("data:image/png;base64,")
    im = Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1])))
    assert im.mode.startswith("I")
    return np.asarray(im).astype(np.int64)


def test_depth_16bit_png_and_min_max():
    image = img(900, 600, 96, 64)  # grid 6 x 4
    grid = (np.arange(24).reshape(4, 6) * 1000 + 500).astype(np.int64)
    text = "<depth><mask>" + rle_text(grid.reshape(-1).tolist()) + "</mask>"
    depth, errors = parse_depth(text, image)
    assert errors == []
    assert (depth["width"], depth["height"], depth["min"], depth["max"]) == (6, 4, 500, 23500)
    assert (depth["image_width"], depth["image_height"]) == (900, 600)
    assert np.array_equal(_png(depth["png"]), grid)


def test_depth_truncated_and_not_a_segmentation():
    image = img(64, 32, 64, 32)  # grid 4 x 2
    text = "<depth><mask>(7,3)(9,2)"
    depth, errors = parse_depth(text, image)
    assert errors == ["depth: no </mask> (truncated output?)",
                      "mask: 5 of 8 cells (4x2 grid), the rest left empty (truncated output?)"]
    assert _png(depth["png"]).tolist() == [[7, 7, 7, 9], [9, 0, 0, 0]]
    assert (depth["min"], depth["max"]) == (7, 9)
    masks, _ = parse_masks(text, image)  # the depth <mask> is not a segmentation mask
    assert masks == []
    assert parse_depth("<depth>", image) == (None, ["depth: <depth> without a <mask>"])
