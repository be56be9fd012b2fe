"""Overlays, checked by pixel colour: box edges, mask centres, skeleton limbs, the depth map beside the image."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from vlgate.presets.masks import mask_rle, png_data_url
from vlgate.presets.overlay import (
    JOINT_VISIBLE,
    LIMB_COLORS,
    MASK_ALPHA,
    draw,
    magma,
    palette,
)

WHITE = (255, 255, 255)


def picture(ext: dict, size: tuple[int, int] = (400, 200), photo: bool = False, **kw) -> Image.Image:
    url = draw(Image.new("RGB", size, WHITE), ext, size, photo=photo, **kw)
    assert url.startswith("data:image/jpeg;base64," if photo else "data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB")


def rect_mask(w: int, h: int, box: tuple[int, int, int, int], label: str) -> dict:
    cells = np.zeros((h, w), dtype=bool)
    cells[box[1]:box[3], box[0]:box[2]] = True
    return {"label": label, "value": 1, **mask_rle(cells, w, h)}


def test_box_edges_and_label_tag() -> None:
    im = picture({"boxes": [{"label": "dog", "bbox": [40, 60, 240, 160]}]})
    assert im.size == (400, 200)
    dog = palette(0)
    assert im.getpixel((40, 110)) == dog and im.getpixel((239, 110)) == dog  # left and right edges
    assert im.getpixel((140, 159)) == dog  # bottom edge
    assert im.getpixel((140, 110)) == WHITE  # inside: untouched
    assert im.getpixel((42, 50)) == dog  # the label's tag sits above the box


def test_mask_centre_is_blended_edge_outlined_outside_untouched() -> None:
    im = picture({"masks": [rect_mask(400, 200, (250, 20, 350, 120), "cat"),
                            rect_mask(400, 200, (20, 20, 120, 120), "dog")]})
    for centre, color in (((300, 70), palette(0)), ((70, 70), palette(1))):  # one colour per label
        want = tuple(round(255 * (1 - MASK_ALPHA) + c * MASK_ALPHA) for c in color)
        assert im.getpixel(centre) == pytest.approx(want, abs=1)
    assert im.getpixel((250, 70)) == palette(0)  # the outline, solid
    assert im.getpixel((200, 150)) == WHITE
    assert im.getpixel((252, 22)) == palette(0)  # no boxes: the label's tag sits inside the mask


def test_size_is_capped_and_coordinates_follow() -> None:
    im = picture({"boxes": [{"label": None, "bbox": [300, 300, 1500, 1200]}]}, size=(3000, 1500), max_side=1024)
    assert im.size == (1024, 512)
    assert im.getpixel((round(300 * 1024 / 3000), 200)) == palette(0)


def test_pose_skeleton_and_joints() -> None:
    kps = [{"name": str(i), "x": 50.0 + 10 * i, "y": 100.0, "v": 1, "visible": True} for i in range(16)]
    kps[13] = {**kps[13], "x": 300.0, "y": 40.0}
    kps[14] = {**kps[14], "x": 300.0, "y": 160.0}  # left shoulder -> left elbow: a vertical left limb
    im = picture({"persons": [{"bbox": None, "keypoints": kps}]})
    assert im.getpixel((300, 100)) == LIMB_COLORS["left"]
    assert im.getpixel((300, 40)) == JOINT_VISIBLE


def test_depth_map_beside_the_image() -> None:
    grid = np.arange(12, dtype=np.uint16).reshape(3, 4) * 100
    im = picture({"depth": {"png": png_data_url(grid), "min": 0, "max": 1100}}, size=(64, 48))
    assert im.size == (64 * 2 + 8, 48)
    assert im.getpixel((10, 10)) == WHITE  # the image itself, left
    assert im.getpixel((64 + 8 + 1, 1)) == tuple(magma(np.array([0.0, 1.0]))[0])  # nearest: the minimum
    assert im.getpixel((64 * 2 + 8 - 2, 46)) == tuple(magma(np.array([0.0, 1.0]))[1])  # far corner: the maximum


def test_photos_come_back_as_jpeg() -> None:
    picture({"boxes": []}, photo=True)
