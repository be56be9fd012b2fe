"""Golden tests from the official parsing semantics (TencentCloudADP/youtu-vl demo/demo.py and demo/vis.py).

Each case is an answer form the official code reads; the expectations are what that code makes of it
(nested polygons, tag orders, <FG>/<BG>, <OTHERS>, <label>, grids larger and smaller than the image),
then the pipeline's pure parts: step labels and items, demo.py's crop numbers, the paste into the image.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from support.pipeline_answers import decode_coco, rle_text
from vlgate.images.types import ImageInfo
from vlgate.presets import (
    PresetRegistry,
    parse_boxes,
    parse_depth,
    parse_masks,
    parse_polygons,
)
from vlgate.presets.masks import core_target
from vlgate.presets.pipeline import LabelMap, fill, step_items, step_labels
from vlgate.presets.settings import CropSpec, PipelineStep
from vlgate.presets.transforms import crop_around_box, crop_region


def img(w: int, h: int, mw: int | None = None, mh: int | None = None) -> ImageInfo:
    return ImageInfo("0" * 64, w, h, mw or w, mh or h)


SQUARE = "<x_10><y_10><x_50><y_10><x_50><y_50><x_10><y_50>"


# ---------------------------------------------------------------- polygons


@pytest.mark.parametrize("text", [
    f"<ins><poly>{SQUARE}</poly></ins>",  # vis.py's form
    f"<ins>{SQUARE}</ins>",  # demo.py's form
    f"<poly>{SQUARE}</poly>",
    f"<ref>cup</ref><ins> <poly>{SQUARE}</poly> </ins>",
])
def test_every_polygon_form_reads_as_one_polygon(text: str) -> None:
    polys, errors = parse_polygons(text, img(100, 100))
    assert errors == []
    assert len(polys) == 1 and polys[0]["bbox"] == [10, 10, 50, 50]


def test_one_ins_with_two_polys_and_a_truncated_one() -> None:
    text = f"<ins><poly>{SQUARE}</poly><poly><x_60><y_60><x_90><y_60><x_90><y_90></poly></ins><ins><poly><x_1><y_1>"
    polys, errors = parse_polygons(text, img(100, 100))
    assert [p["bbox"] for p in polys] == [[10, 10, 50, 50], [60, 60, 90, 90]]
    assert errors == ["polygon 2: not closed (truncated output?)", "polygon 2: 1 point(s), a polygon needs 3"]


def test_label_tags_label_boxes_like_refs() -> None:
    boxes, _ = parse_boxes("<label>dog</label><box><x_1><y_2><x_3><y_4></box>"
                           "<ref>cat</ref><box><x_5><y_6><x_7><y_8></box>",
                           img(100, 100))
    assert [b["label"] for b in boxes] == ["dog", "cat"]


# ---------------------------------------------------------------- masks and depth


def test_depth_tag_anywhere_makes_a_depth_answer() -> None:
    grid = rle_text(np.arange(12) % 5)
    for text in (f"<depth><mask>{grid}</mask>", f"<mask>{grid}</mask><depth>", f"<depth> map: <mask>{grid}</mask>"):
        depth, errors = parse_depth(text, img(64, 48))
        assert errors == [] and (depth["width"], depth["height"], depth["max"]) == (4, 3, 4)
        assert parse_masks(text, img(64, 48)) == ([], [])  # not a segmentation


@pytest.mark.parametrize("refs,target", [("<ref><FG></ref><ref><BG></ref>", 0),  # demo.py flips this order
                                          ("<ref><BG></ref><ref><FG></ref>", 1), ("", 1)])
def test_core_target_follows_fg(refs: str, target: int) -> None:
    grid = np.zeros((3, 4), dtype=int)
    grid[1, 1:3] = 1
    text = refs + "<mask>" + rle_text(np.where(grid == 1, target, 1 - target)) + "</mask>"
    cells, errors = core_target(text, img(64, 48))
    assert errors == [] and np.array_equal(cells, grid == 1)
    masks, errors = parse_masks(text, img(64, 48))
    assert errors == [] and len(masks) == 1  # background (<BG>, or value 0 without labels) has no mask
    assert masks[0]["label"] == ("<FG>" if refs else None) and masks[0]["area"] == 2 * 16 * 16


def test_others_is_no_class() -> None:
    text = "<ref>dog</ref><ref><OTHERS></ref><mask>" + rle_text([0] * 6 + [1] * 6) + "</mask>"
    masks, _ = parse_masks(text, img(64, 48))
    assert [m["label"] for m in masks] == ["dog"]
    step = PipelineStep(name="detect", prompt="Detect every objects that belongs to the following categories: {labels}")
    answer = "<ref>dog</ref><ref><OTHERS></ref><ref>cat</ref><ref>dog</ref><mask>(0,1)</mask>"
    assert step_labels(step, answer) == ["dog", "cat"]
    assert step_labels(step, "<ref>dog</ref><ref>cat</ref>") == []  # match_openseg needs a <mask>
    assert fill(step.prompt, {}, ["dog", "cat"], step.labels_join).endswith("categories: dog,cat")


def test_grid_larger_than_the_image_drops_no_mask() -> None:
    image = img(500, 375, 512, 384)  # the full model grid is larger than the image
    grid = np.zeros((384, 512), dtype=int)
    grid[:, 200:300] = 1
    grid[383, 0:2] = 2  # a class only in a row and columns nearest-neighbour skips
    text = "<ref>a</ref><ref>b</ref><ref>c</ref><mask>" + rle_text(grid) + "</mask>"
    masks, errors = parse_masks(text, image)
    assert errors == []
    by = {m["label"]: m for m in masks}
    assert set(by) == {"a", "b", "c"} and by["c"]["area"] > 0
    for m in masks:  # tight boxes: exactly the decoded pixels' extent
        ys, xs = np.nonzero(decode_coco(m["rle"]))
        assert m["bbox"] == [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
        assert m["area"] == int(decode_coco(m["rle"]).sum())
    assert by["c"]["bbox"][1] == 374  # the bottom row


def test_grid_smaller_than_the_image_is_stretched() -> None:
    grid = np.zeros((24, 32), dtype=int)  # patch grid of 512x384, image 500x375
    grid[12:, 16:] = 1
    masks, errors = parse_masks("<ref>a</ref><ref>b</ref><mask>" + rle_text(grid) + "</mask>", img(500, 375, 512, 384))
    assert errors == []
    b = {m["label"]: m for m in masks}["b"]
    assert b["bbox"] == [250, 187, 500, 375]  # pixel centres: x 250 -> cell 16.0; y 187 -> (187.5 * 24 / 375) 12.0


# ---------------------------------------------------------------- pipeline parts


def test_items_largest_first_and_limited() -> None:
    step = PipelineStep(name="core", prompt="p", for_each="boxes", order="area_desc", limit=2)
    previous = {"boxes": [{"label": "s", "bbox": [0, 0, 10, 10]}, {"label": "l", "bbox": [0, 0, 50, 50]},
                          {"label": "m", "bbox": [0, 0, 20, 20]}]}
    assert [i.label for i in step_items(step, previous)] == ["l", "m"]


@pytest.mark.parametrize("box,region", [
    ((400.39, 299.29, 599.61, 500.14), (380, 279, 619, 520)),  # demo.py crop_and_resize: x1.2 around the centre
    ((0, 0, 100, 100), (0, 0, 110, 110)),  # clamped at the image's edge
    ((950, 650, 1000, 700), (945, 645, 1000, 700)),
])
def test_crop_region_is_demo_py(box: tuple[float, ...], region: tuple[int, ...]) -> None:
    assert crop_region(list(box), 1000, 700, 1.2) == region


def test_crop_is_resized_to_1280_and_marked() -> None:
    image = Image.new("RGB", (1000, 700), (0, 0, 0))
    plain = crop_around_box(image, [400.39, 299.29, 599.61, 500.14], CropSpec(mark=False, format="png"))
    marked = crop_around_box(image, [400.39, 299.29, 599.61, 500.14], CropSpec(format="png"), seed=3)
    assert plain.region == marked.region == (380, 279, 619, 520)
    assert plain.size == marked.size == (1280, 1290)  # shorter side 1280, the other int(241 * 1280 / 239)
    a = np.asarray(Image.open(io.BytesIO(marked.data)))
    b = np.asarray(Image.open(io.BytesIO(plain.data)))
    assert b.max() == 0 and a.max() > 0  # the box is drawn on the crop...
    row = a[a.shape[0] // 2].max(axis=1)
    assert row[:85].max() == 0 and row[100:115].max() > 100  # ...at its left edge: 20 px in, x 1280/239 = 107


def test_label_map_paste_later_items_paint_over() -> None:
    lm = LabelMap(100, 80)
    lm.paste((10, 10, 50, 50), np.ones((4, 4), dtype=bool), lm.class_id("dog", ["dog", "cat"]))
    lm.paste((30, 30, 70, 70), np.ones((2, 2), dtype=bool), lm.class_id("cat", ["dog", "cat"]))
    lm.paste((0, 0, 5, 5), np.ones((1, 1), dtype=bool), lm.class_id("bird", ["dog", "cat"]))  # unknown: id 1
    masks = {m["label"]: m for m in lm.masks()}
    for m in masks.values():  # the RLE is exactly the label map's pixels of that class
        assert np.array_equal(decode_coco(m["rle"]), lm.ids == m["value"])
    assert masks["dog"]["value"] == 1 and masks["cat"]["value"] == 2
    assert masks["cat"]["bbox"] == [30, 30, 70, 70]
    assert masks["dog"]["area"] == 40 * 40 - 20 * 20 + 25


@pytest.mark.parametrize("step,why", [
    ({"name": "x", "prompt": "Segment the core target.", "for_each": "boxes", "parser": "masks"}, "core_target"),
    ({"name": "x", "prompt": "Segment the core target.", "parser": "core_target"}, "for_each"),
    ({"name": "x", "prompt": "Find {thing}", "parser": "boxes"}, "{thing} is not a parameter"),
])
def test_pipeline_steps_are_checked_at_load(step: dict, why: str) -> None:
    with pytest.raises(ValueError, match=r"presets\.mine\.pipeline\.x") as exc:
        PresetRegistry.load({"mine": {"extends": "refer_segment", "pipeline": [step]}})
    assert why in str(exc.value)


@pytest.mark.parametrize("region", [(0, 0, 7, 5), (3, 2, 10, 8), (5, 0, 10, 8), (0, 3, 4, 8)])
def test_rle_of_a_pasted_area_matches_the_whole_image(region: tuple[int, int, int, int]) -> None:
    rng = np.random.default_rng(sum(region))
    lm = LabelMap(10, 8)
    x1, y1, x2, y2 = region
    lm.paste(region, rng.random((y2 - y1, x2 - x1)) > 0.4, lm.class_id("a", []))
    (m,) = lm.masks()
    assert np.array_equal(decode_coco(m["rle"]), lm.ids == 1)
