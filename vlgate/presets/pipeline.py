"""The pure part of pipeline presets: what each follow-up step asks, about which items, and how results combine.

The gateway's runner (gateway/pipelines.py) does the I/O; everything here is plain data in, data out, so the
official semantics (demo.py `infer_openseg`, `infer_refseg`, `infer_segcore`) are tested without a server:
- `{labels}`: the previous answer's `<ref>` classes but `<OTHERS>`, only when it has a `<mask>` (match_openseg);
- items: the previous step's boxes (or polygons' boxes), largest first when asked (parse_det), at most `limit`;
- core targets: each crop's mask is resized nearest-neighbour to its crop region and pasted into one label map
  of the user's image, later items painting over earlier ones; class ids follow the `{labels}` order from 1
  (an unknown class gets 1, as demo.py's `class_map.get(cls, 1)`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from vlgate.presets.params import render
from vlgate.presets.preset import PLACEHOLDER_RE
from vlgate.presets.scan import refs
from vlgate.presets.settings import PipelineStep
from vlgate.presets.transforms import stretch


@dataclass(frozen=True, slots=True)
class Item:
    """One thing a `for_each` step works on: its label and box in the user's pixels."""

    label: str | None
    box: list[float]

    @property
    def area(self) -> float:
        return max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1])


def step_items(step: PipelineStep, previous: dict[str, Any]) -> list[Item]:
    """The previous step's boxes or polygons (their boxes), ordered and cut as the step says."""
    found = [Item(e.get("label"), list(e["bbox"])) for e in previous.get(step.for_each or "") or ()
             if isinstance(e, dict) and e.get("bbox")]
    if step.order == "area_desc":
        found.sort(key=lambda i: i.area, reverse=True)  # stable: equal areas keep the model's order
    return found[: step.limit]


def step_labels(step: PipelineStep, previous_text: str) -> list[str]:
    """demo.py match_openseg: every `<ref>` class except the excluded ones, when the answer has a `<mask>`."""
    if "<mask>" not in previous_text:
        return []
    seen: dict[str, None] = {}
    for _, label in refs(previous_text):
        if label and label not in step.labels_exclude:
            seen.setdefault(label, None)
    return list(seen)


def needs_labels(step: PipelineStep) -> bool:
    return "labels" in PLACEHOLDER_RE.findall(step.prompt)


def fill(template: str, values: dict[str, Any], labels: list[str], join: str) -> str:
    """A step template with the preset's parameters and `{labels}` filled in."""

    def one(m: Any) -> str:
        name = m.group(1)
        if name == "labels":
            return join.join(labels)
        return render(values.get(name, ""), None)

    return PLACEHOLDER_RE.sub(one, template)


class LabelMap:
    """Core-target masks pasted into the user's image (one class id per pixel, 0 = background)."""

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.ids = np.zeros((height, width), dtype=np.uint16)
        self.names: dict[int, str | None] = {}
        self.bounds: tuple[int, int, int, int] | None = None  # union of the pasted regions

    def class_id(self, name: str | None, classes: list[str]) -> int:
        cid = classes.index(name) + 1 if name in classes else 1
        self.names.setdefault(cid, classes[cid - 1] if classes else name)
        return cid

    def paste(self, region: tuple[int, int, int, int], cells: np.ndarray, cid: int) -> None:
        """demo.py: mask resized (nearest) to the crop region, then `roi[mask == 1] = class_id`."""
        x1, y1, x2, y2 = region
        roi = self.ids[y1:y2, x1:x2]
        roi[stretch(cells, roi.shape[1], roi.shape[0])] = cid
        b = self.bounds
        self.bounds = (min(b[0], x1), min(b[1], y1), max(b[2], x2), max(b[3], y2)) if b else region

    def masks(self) -> list[dict[str, Any]]:
        """One mask per class present, in the `masks` shape of the extension (see run.py)."""
        if self.bounds is None:
            return []
        x1, y1, x2, y2 = self.bounds
        band = self.ids[y1:y2, x1:x2]  # nothing was pasted outside: the work stays in the pasted area
        out = []
        for cid in sorted(self.names):
            found = band_rle(band == cid, (x1, y1), self.width, self.height)
            if found["area"]:  # a later paste may have covered every pixel of an earlier class
                out.append({"label": self.names[cid], "value": cid, "grid": [self.width, self.height], **found})
        return out


def band_rle(sub: np.ndarray, origin: tuple[int, int], width: int, height: int) -> dict[str, Any]:
    """area, tight bbox and uncompressed COCO RLE (column-major) of an image-sized mask that is empty outside
    `sub`, placed at `origin`: only the columns `sub` spans are expanded, the rest are two runs of zeros."""
    x0, y0 = origin
    sh, sw = sub.shape
    cols = np.zeros((sw, height), dtype=bool)
    cols[:, y0 : y0 + sh] = sub.T
    flat = cols.ravel()
    counts = np.diff(np.concatenate([[0], np.flatnonzero(flat[1:] != flat[:-1]) + 1, [flat.size]])).tolist()
    before, after = x0 * height, (width - x0 - sw) * height
    if flat[0]:
        counts.insert(0, before)
    else:
        counts[0] += before
    if flat[-1]:
        counts.append(after)
    else:
        counts[-1] += after
    ys, xs = np.flatnonzero(sub.any(axis=1)), np.flatnonzero(sub.any(axis=0))
    bbox = [int(xs[0]) + x0, int(ys[0]) + y0, int(xs[-1]) + x0 + 1, int(ys[-1]) + y0 + 1] if xs.size else None
    return {"area": int(np.count_nonzero(sub)), "bbox": bbox, "rle": {"size": [height, width], "counts": counts}}
