"""Pose parser: `<person><box>…</box><kpt><x_><y_><v_></kpt>×16</person>` → persons with named MPII joints.

The official prompt allows one `<kpt>` per joint or one `<kpt>` holding all 16 triples; both are read.
Visibility `v` is kept raw; `visible` uses the official visualizer's threshold (v >= 0.5).
"""

from __future__ import annotations

from typing import Any

from vlgate.images.types import ImageInfo
from vlgate.presets.parsers import frame_for
from vlgate.presets.scan import Block, blocks, coords

MPII_JOINTS: tuple[str, ...] = (
    "right_ankle",
    "right_knee",
    "right_hip",
    "left_hip",
    "left_knee",
    "left_ankle",
    "pelvis",
    "thorax",
    "upper_neck",
    "head_top",
    "right_wrist",
    "right_elbow",
    "right_shoulder",
    "left_shoulder",
    "left_elbow",
    "left_wrist",
)
VISIBLE_AT = 0.5


def parse_pose(text: str, image: ImageInfo | None) -> tuple[list[dict[str, Any]], list[str]]:
    """→ [{"bbox": [x1, y1, x2, y2] | None, "keypoints": [{"name", "x", "y", "v", "visible"}, …]}]."""
    errors: list[str] = []
    frame = frame_for(image, errors)
    persons = blocks(text, "person")
    if not persons and "<kpt>" in text:
        errors.append("no <person> tags: all keypoints read as one person")
        persons = [Block(0, len(text), text, True)]
    out: list[dict[str, Any]] = []
    for i, p in enumerate(persons):
        if not p.closed:
            errors.append(f"person {i}: no </person> (truncated output?)")
        bbox = None
        boxes = blocks(p.inner, "box")
        if boxes:
            items = coords(boxes[0].inner)
            if "".join(a for a, _ in items)[:4] == "xyxy":
                bbox = frame.box(*(v for _, v in items[:4]))
            else:
                errors.append(f"person {i}: malformed <box>")
        else:
            errors.append(f"person {i}: no <box>")
        keypoints: list[dict[str, Any]] = []
        extra = 0
        for k in blocks(p.inner, "kpt"):
            items = coords(k.inner)
            for j in range(0, len(items), 3):
                triple = items[j : j + 3]
                if len(triple) < 3:
                    errors.append(f"person {i}: incomplete keypoint {len(keypoints)}")
                    break
                if tuple(a for a, _ in triple) != ("x", "y", "v"):
                    errors.append(f"person {i}: keypoint {len(keypoints)} is not <x_><y_><v_>")
                    break
                if len(keypoints) == len(MPII_JOINTS):
                    extra += 1
                    continue
                (_, x), (_, y), (_, v) = triple
                px, py = frame.point(x, y)
                name = MPII_JOINTS[len(keypoints)]
                keypoints.append({"name": name, "x": px, "y": py, "v": v, "visible": v >= VISIBLE_AT})
        if extra:
            errors.append(f"person {i}: {extra} keypoint(s) beyond 16 ignored")
        if len(keypoints) != len(MPII_JOINTS):
            errors.append(f"person {i}: {len(keypoints)} of {len(MPII_JOINTS)} keypoints")
        out.append({"bbox": bbox, "keypoints": keypoints})
    return out, errors
