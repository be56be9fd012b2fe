"""Parsers for Youtu-VL's geometric answers: boxes, points, polygons, counts.

Each is a plain function `(text, image) -> (results, errors)`: results are in the user's original
pixels (see coords.py); malformed or truncated output never raises, it yields what could be read
plus one human-readable error per problem.
"""

from __future__ import annotations

import re
from typing import Any

from vlgate.images.types import ImageInfo
from vlgate.presets.coords import Frame
from vlgate.presets.scan import Block, blank, blocks, coords, label_at, refs, xy_pairs

Result = tuple[list[dict[str, Any]], list[str]]

# Model-grid fallback when no image info is at hand: coordinates stay in model pixels (0..2047).
_IDENTITY = Frame(2048, 2048, 2048, 2048)


def frame_for(image: ImageInfo | None, errors: list[str]) -> Frame:
    frame = Frame.of(image)
    if frame is None:
        errors.append("no image size known: coordinates are left in model pixels")
        return _IDENTITY
    return frame


def parse_boxes(text: str, image: ImageInfo | None) -> Result:
    """`<ref>label</ref><box><x_A><y_B><x_C><y_D></box>…` → [{"label", "bbox": [x1, y1, x2, y2]}].

    A ref labels every box after it until the next ref; a box with no ref before it has label None.
    Boxes inside `<person>` blocks belong to the pose parser and are skipped.
    """
    errors: list[str] = []
    frame = frame_for(image, errors)
    text = blank(text, blocks(text, "person"))
    labels = refs(text)
    out: list[dict[str, Any]] = []
    for i, b in enumerate(blocks(text, "box")):
        items = coords(b.inner)
        axes = "".join(a for a, _ in items)
        if not b.closed and len(items) < 4:
            errors.append(f"box {i}: truncated (no </box>, {len(items)} of 4 coordinates)")
            continue
        if axes[:4] != "xyxy":
            errors.append(f"box {i}: expected <x_><y_><x_><y_>, got {axes or 'no coordinates'!r}")
            continue
        if len(items) > 4:
            errors.append(f"box {i}: {len(items)} coordinates, used the first 4")
        if not b.closed:
            errors.append(f"box {i}: no </box> (truncated output?)")
        (_, x1), (_, y1), (_, x2), (_, y2) = items[:4]
        out.append({"label": label_at(labels, b.start), "bbox": frame.box(x1, y1, x2, y2)})
    return out, errors


def parse_points(text: str, image: ImageInfo | None) -> Result:
    """Bare `<x_N><y_N>` pairs outside boxes, polygons, keypoints and masks → [{"label", "point": [x, y]}]."""
    errors: list[str] = []
    frame = frame_for(image, errors)
    text = blank(text, blocks(text, "person", "box", "ins", "poly", "kpt", "mask"))
    labels = refs(text)
    out = []
    for m in re.finditer(r"<x_(\d+(?:\.\d+)?)>\s*<y_(\d+(?:\.\d+)?)>", text):
        x, y = float(m.group(1)), float(m.group(2))
        out.append({"label": label_at(labels, m.start()), "point": frame.point(x, y)})
    return out, errors


def polygon_blocks(text: str) -> list[Block]:
    """Every polygon: `<poly>…</poly>` (also nested as `<ins><poly>…</poly></ins>`, as vis.py reads) and bare
    `<ins>…</ins>` (as demo.py reads); an `<ins>` wrapping polys is a wrapper, not a polygon of its own."""
    polys = blocks(text, "poly")
    wrappers = blocks(blank(text, polys), "ins")
    bare = [w for w in wrappers if not any(w.start <= p.start < max(w.end, w.start + 1) for p in polys)]
    return sorted(polys + bare, key=lambda b: b.start)


def parse_polygons(text: str, image: ImageInfo | None) -> Result:
    """`<ins>…</ins>`, `<poly>…</poly>` or `<ins><poly>…</poly></ins>` of `<x_N><y_N>` pairs
    → [{"label", "points": [[x, y], …], "bbox"}]."""
    errors: list[str] = []
    frame = frame_for(image, errors)
    labels = refs(text)
    out: list[dict[str, Any]] = []
    for i, b in enumerate(polygon_blocks(text)):
        pairs, stray = xy_pairs(coords(b.inner))
        if not b.closed:
            errors.append(f"polygon {i}: not closed (truncated output?)")
        if stray:
            errors.append(f"polygon {i}: {stray} coordinate(s) not in <x_><y_> pairs, skipped")
        if len(pairs) < 3:
            errors.append(f"polygon {i}: {len(pairs)} point(s), a polygon needs 3")
            continue
        points = [frame.point(x, y) for x, y in pairs]
        xs = [p[0] for p in points]
        ys = [p[1] for p in points]
        out.append(
            {
                "label": label_at(labels, b.start),
                "points": points,
                "bbox": [min(xs), min(ys), max(xs), max(ys)],
            }
        )
    return out, errors


_WORDS = {
    w: n
    for n, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
        "fifteen sixteen seventeen eighteen nineteen twenty".split()
    )
}
_NUMBER_RE = re.compile(r"\b(\d+)\b|\b(" + "|".join(_WORDS) + r")\b", re.IGNORECASE)


def parse_count(text: str) -> tuple[int | None, list[str]]:
    """The first number in the answer ('3', 'There are three dogs.') or None."""
    m = _NUMBER_RE.search(text)
    if m is None:
        return None, ["no number in the answer"]
    if m.group(1) is not None:
        return int(m.group(1)), []
    return _WORDS[m.group(2).lower()], []
