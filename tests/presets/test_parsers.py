"""Golden tests for the box / point / polygon / count / pose parsers, from model-style strings."""

from __future__ import annotations

import itertools
import math

import pytest

from vlgate.images.types import ImageInfo
from vlgate.presets import (
    MPII_JOINTS,
    parse_boxes,
    parse_count,
    parse_points,
    parse_polygons,
    parse_pose,
)


def img(w: int, h: int, mw: int, mh: int) -> ImageInfo:
    return ImageInfo(sha256="0" * 64, orig_width=w, orig_height=h, width=mw, height=mh)


def model_grid(w: int, h: int, max_patches: int = 8192) -> tuple[int, int]:
    """Youtu-VL's resize rule (DESIGN.md), written independently of the gateway code."""
    scale = 1.0
    while True:
        mh = max(32, math.ceil(h * scale / 32) * 32)
        mw = max(32, math.ceil(w * scale / 32) * 32)
        if (mh // 16) * (mw // 16) <= max_patches:
            return mw, mh
        scale -= 0.02


SAME = img(1000, 1000, 1000, 1000)  # identity mapping: coordinates stay as written


# ---------------------------------------------------------------- boxes


def test_boxes_several_per_ref_and_labels_switch():
    text = (
        "<ref>dog</ref><box><x_10><y_20><x_110><y_220></box><box><x_300><y_310><x_400><y_420></box>"
        "<ref>cat</ref><box><x_5><y_6><x_7><y_8></box>"
    )
    boxes, errors = parse_boxes(text, SAME)
    assert errors == []
    assert boxes == [
        {"label": "dog", "bbox": [10, 20, 110, 220]},
        {"label": "dog", "bbox": [300, 310, 400, 420]},
        {"label": "cat", "bbox": [5, 6, 7, 8]},
    ]


def test_boxes_without_ref_have_null_label():
    boxes, errors = parse_boxes("The cat is here: <box><x_1><y_2><x_3><y_4></box>.", SAME)
    assert errors == []
    assert boxes == [{"label": None, "bbox": [1, 2, 3, 4]}]


def test_boxes_map_to_original_pixels():
    boxes, _ = parse_boxes("<ref>a</ref><box><x_64><y_32><x_640><y_320></box>", img(1000, 500, 640, 320))
    assert boxes[0]["bbox"] == [100.0, 50.0, 1000.0, 500.0]


def test_boxes_out_of_range_are_clamped_and_corners_ordered():
    # 2047 is past the 640x320 grid; corners given in reverse order
    boxes, errors = parse_boxes("<box><x_2047><y_2047><x_320><y_160></box>", img(1000, 500, 640, 320))
    assert errors == []
    assert boxes[0]["bbox"] == [500.0, 250.0, 1000.0, 500.0]


def test_boxes_truncated_and_malformed_give_partial_results():
    text = (
        "<ref>dog</ref><box><x_1><y_2><x_3><y_4></box>"  # fine
        "<box><x_1><x_2><y_3><y_4></box>"  # wrong order
        "<box><x_9><y_9><x_9></box>"  # 3 coordinates
        "<ref>cat</ref><box><x_5><y_6>"  # truncated
    )
    boxes, errors = parse_boxes(text, SAME)
    assert boxes == [{"label": "dog", "bbox": [1, 2, 3, 4]}]
    assert len(errors) == 3
    assert "box 1" in errors[0] and "'xxyy'" in errors[0]
    assert "box 2" in errors[1] and "'xyx'" in errors[1]
    assert "box 3: truncated" in errors[2]


def test_boxes_unclosed_but_complete_is_kept_with_error():
    boxes, errors = parse_boxes("<ref>cup</ref><box><x_1><y_2><x_3><y_4>", SAME)
    assert boxes == [{"label": "cup", "bbox": [1, 2, 3, 4]}]
    assert errors == ["box 0: no </box> (truncated output?)"]


def test_boxes_garbage_never_raises():
    for text in ["", "<box>", "<ref>", "</box></ref><box></box>", "<box><x_></box>", "<ref>a<box><x_1>"]:
        boxes, errors = parse_boxes(text, SAME)
        assert isinstance(boxes, list) and isinstance(errors, list)


def test_boxes_skip_person_blocks():
    text = "<person><box><x_1><y_1><x_2><y_2></box><kpt></kpt></person><box><x_5><y_5><x_6><y_6></box>"
    boxes, _ = parse_boxes(text, SAME)
    assert boxes == [{"label": None, "bbox": [5, 5, 6, 6]}]


def test_boxes_without_image_stay_in_model_pixels():
    boxes, errors = parse_boxes("<box><x_1><y_2><x_3><y_4></box>", None)
    assert boxes == [{"label": None, "bbox": [1, 2, 3, 4]}]
    assert errors == ["no image size known: coordinates are left in model pixels"]


@pytest.mark.parametrize(
    "w,h",
    [(1920, 1080), (1080, 1920), (4000, 3000), (640, 480), (300, 2000), (7, 5), (4096, 512), (1000, 1000)],
)
def test_coordinate_mapping_across_aspect_ratios(w: int, h: int):
    mw, mh = model_grid(w, h)
    image = img(w, h, mw, mh)
    pts = [(0, 0), (mw // 3, mh // 7), (mw // 2, mh // 2), (mw - 1, mh - 1), (mw, mh)]
    text = "".join(f"<box><x_{x1}><y_{y1}><x_{x2}><y_{y2}></box>" for (x1, y1), (x2, y2) in itertools.pairwise(pts))
    boxes, errors = parse_boxes(text, image)
    assert errors == []
    for b, ((x1, y1), (x2, y2)) in zip(boxes, itertools.pairwise(pts), strict=True):
        expect = [x1 * w / mw, y1 * h / mh, x2 * w / mw, y2 * h / mh]
        assert b["bbox"] == pytest.approx(expect, abs=0.006)
    assert boxes[-1]["bbox"][2:] == [w, h]  # the grid's far corner is the image's far corner


# ---------------------------------------------------------------- points


def test_points_outside_other_blocks():
    text = "<ref>button</ref><x_320><y_160> and <box><x_1><y_2><x_3><y_4></box>"
    points, errors = parse_points(text, img(1000, 500, 640, 320))
    assert errors == []
    assert points == [{"label": "button", "point": [500.0, 250.0]}]


# ---------------------------------------------------------------- polygons


def test_polygons_ins_and_poly():
    text = (
        "<ref>hotdog</ref><ins><x_0><y_0><x_64><y_0><x_64><y_32></ins>"
        "<poly><x_10><y_10><x_20><y_10><x_20><y_20><x_10><y_20></poly>"
    )
    polys, errors = parse_polygons(text, img(200, 100, 64, 32))
    assert errors == []
    assert polys[0] == {"label": "hotdog", "points": [[0.0, 0.0], [200.0, 0.0], [200.0, 100.0]],
                        "bbox": [0.0, 0.0, 200.0, 100.0]}
    assert polys[1]["points"] == [[31.25, 31.25], [62.5, 31.25], [62.5, 62.5], [31.25, 62.5]]
    assert polys[1]["label"] == "hotdog"


def test_polygons_truncated_and_too_short():
    text = "<ins><x_1><y_1><x_2></ins><ins><x_0><y_0><x_5><y_0><x_5><y_5><x_9"
    polys, errors = parse_polygons(text, SAME)
    assert polys == [{"label": None, "points": [[0, 0], [5, 0], [5, 5]], "bbox": [0, 0, 5, 5]}]
    assert errors == [
        "polygon 0: 1 coordinate(s) not in <x_><y_> pairs, skipped",
        "polygon 0: 1 point(s), a polygon needs 3",
        "polygon 1: not closed (truncated output?)",
    ]


# ---------------------------------------------------------------- count


@pytest.mark.parametrize(
    "text,n",
    [("3", 3), ("There are 12 dogs.", 12), ("There are three dogs in the image.", 3), ("Zero.", 0), ("None", None)],
)
def test_count(text: str, n: int | None):
    value, errors = parse_count(text)
    assert value == n
    assert errors == ([] if n is not None else ["no number in the answer"])


# ---------------------------------------------------------------- pose


def _person(box: tuple[int, int, int, int], start: int, per_kpt: bool = True, n: int = 16) -> str:
    triples = [f"<x_{start + i}><y_{start + 2 * i}><v_{i % 2}>" for i in range(n)]
    kpts = "".join(f"<kpt>{t}</kpt>" for t in triples) if per_kpt else "<kpt>" + "".join(triples) + "</kpt>"
    x1, y1, x2, y2 = box
    return f"<person><box><x_{x1}><y_{y1}><x_{x2}><y_{y2}></box>{kpts}</person>"


def test_pose_two_persons_named_joints():
    text = _person((10, 20, 200, 400), 100) + _person((300, 20, 500, 400), 300, per_kpt=False)
    persons, errors = parse_pose(text, img(2000, 1000, 1000, 500))
    assert errors == []
    assert len(persons) == 2
    p0, p1 = persons
    assert p0["bbox"] == [20.0, 40.0, 400.0, 800.0]
    assert [k["name"] for k in p0["keypoints"]] == list(MPII_JOINTS)
    assert MPII_JOINTS[0] == "right_ankle" and MPII_JOINTS[9] == "head_top" and MPII_JOINTS[15] == "left_wrist"
    k5 = p0["keypoints"][5]
    assert (k5["x"], k5["y"], k5["v"], k5["visible"]) == (210.0, 220.0, 1, True)
    assert p0["keypoints"][4]["visible"] is False
    assert p1["keypoints"][15] == {"name": "left_wrist", "x": 630.0, "y": 660.0, "v": 1, "visible": True}


def test_pose_truncated_person():
    text = _person((1, 2, 3, 4), 0) + "<person><box><x_1><y_2><x_3><y_4></box><kpt><x_5><y_6><v_1></kpt><kpt><x_7>"
    persons, errors = parse_pose(text, SAME)
    assert len(persons) == 2
    assert len(persons[1]["keypoints"]) == 1
    assert persons[1]["keypoints"][0]["name"] == "right_ankle"
    assert errors == [
        "person 1: no </person> (truncated output?)",
        "person 1: incomplete keypoint 1",
        "person 1: 1 of 16 keypoints",
    ]


def test_pose_without_person_tags_and_extra_keypoints():
    text = "<box><x_1><y_2><x_3><y_4></box>" + "".join(f"<kpt><x_{i}><y_{i}><v_1></kpt>" for i in range(18))
    persons, errors = parse_pose(text, SAME)
    assert len(persons) == 1 and len(persons[0]["keypoints"]) == 16
    assert persons[0]["bbox"] == [1, 2, 3, 4]
    assert errors == ["no <person> tags: all keypoints read as one person", "person 0: 2 keypoint(s) beyond 16 ignored"]
