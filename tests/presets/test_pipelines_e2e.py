"""Pipeline presets end to end: `vlgate serve` in front of a scripted backend that answers each step.

The backend answers what a Youtu-VL would (polygon, boxes, core-target masks) for the test picture, so the
tests check what the gateway does between the steps: the crop it sends (size and content, demo.py's
numbers), where the masks land in the user's picture, parallel steps, partial results on a failing step.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import numpy as np
import openai
import pytest
from PIL import Image

from support.fakebackend import FakeBackend
from support.gateway_process import GatewayProcess
from support.pipeline_answers import (
    GREEN,
    GREEN_BOX,
    RED,
    RED_BOX,
    core_answer,
    decode_coco,
    image_of,
    picture,
    png_data_url,
    prompt_of,
    requests,
    rle_text,
)

# model pixels of the 1000x700 picture are on its 1024x704 grid: x_model = x * 1024 / 1000, y_model = y * 704 / 700
POLYGON = "<ins><poly><x_410><y_301><x_614><y_301><x_614><y_503><x_410><y_503></poly></ins>"
REGION = (380, 279, 619, 520)  # demo.py crop_and_resize of the polygon's box (400.39, 299.29, 599.61, 500.14)
CROP_SIZE = (1280, 1290)  # shorter side 1280, int() of the other: 241 * 1280 / 239
SENT_SIZE = (1280, 1312)  # the gateway's grid for 1280x1290


def _has(im: Image.Image, color: tuple[int, int, int]) -> bool:
    return bool((np.abs(np.asarray(im).astype(int) - color).sum(axis=2) < 30).any())


def model_box(box: tuple[int, int, int, int]) -> str:
    x1, y1, x2, y2 = box
    return (f"<box><x_{round(x1 * 1.024)}><y_{round(y1 * 704 / 700)}>"
            f"<x_{round(x2 * 1.024)}><y_{round(y2 * 704 / 700)}></box>")


class Script:
    """Answers per prompt; remembers when each core-target request arrived."""

    def __init__(self, fail_green: bool = False, polygon: str = POLYGON, core_late_s: float = 0.0) -> None:
        self.core_times: list[float] = []
        self.fail_green = fail_green
        self.core_late_s = core_late_s
        self.polygon = polygon
        self.lock = threading.Lock()

    def __call__(self, req: dict[str, Any]) -> Any:
        if "messages" not in req:  # the gateway's own probes (/tokenize ...)
            return "?"
        prompt = prompt_of(req)
        if prompt.startswith("Can you segment"):
            return self.polygon
        if prompt == "Segment all objects in this image.":
            grid = np.zeros((44, 64), dtype=int)  # patch grid of 1024x704
            grid[5:10, 5:10], grid[20:30, 25:38] = 1, 0
            grid[30:40, 50:60] = 2
            return "<ref>green thing</ref><ref>red thing</ref><ref><OTHERS></ref><mask>" + rle_text(grid) + "</mask>"
        if prompt.startswith("Detect every objects"):
            return (f"<ref>green thing</ref>{model_box(GREEN_BOX)}<ref>red thing</ref>{model_box(RED_BOX)}"
                    f"<ref>red thing</ref>{model_box((700, 500, 760, 560))}")
        if prompt == "Segment the core target.":
            with self.lock:
                self.core_times.append(time.monotonic())
                n = len(self.core_times)
            crop = image_of(req)
            if self.fail_green and _has(crop, GREEN):  # the green box's crop fails, the others answer
                return 500
            answer = core_answer(crop, fg_first=n % 2 == 1)
            return (self.core_late_s, answer) if self.core_late_s else answer
        return "?"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    """One gateway for the module: at most 3 parallel steps, a 3 s request deadline."""
    fb = FakeBackend(script=Script(), slots=4).start()
    gw = GatewayProcess({"backends": [{"url": fb.url}],
                         "gateway": {"pipeline_parallel": 3, "request_timeout_s": 3}}, tmp_path_factory.mktemp("gw"))
    gw.start().wait_ready()
    yield gw, fb
    gw.stop()
    fb.stop()


@pytest.fixture
def scripted(served: tuple[GatewayProcess, FakeBackend]):
    """Give the shared backend this test's script (and answer delay); forget earlier requests."""
    gw, fb = served

    def start(script: Script, delay_s: float = 0.0) -> tuple[GatewayProcess, FakeBackend]:
        fb.script, fb.delay_s = script, delay_s
        fb.seen.clear()
        return gw, fb

    yield start
    fb.delay_s = 0.0


def client(gw: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0, _strict_response_validation=True)


def ask(gw: GatewayProcess, preset: dict[str, Any], **kw: Any) -> Any:
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": png_data_url(picture())}}]}]
    return client(gw).chat.completions.create(model="youtu-vl", messages=messages, extra_body={"preset": preset}, **kw)


def red_iou(mask: np.ndarray) -> float:
    want = np.zeros_like(mask)
    x1, y1, x2, y2 = RED_BOX
    want[y1:y2, x1:x2] = True
    return float((mask & want).sum() / (mask | want).sum())


def test_refer_segment_two_steps_crop_and_mask_in_original_pixels(scripted) -> None:
    gw, fb = scripted(Script())
    r = ask(gw, {"name": "refer_segment", "expression": "the red square"})
    first, second = requests(fb)
    assert prompt_of(first) == 'Can you segment "the red square" in this image?'
    assert prompt_of(second) == "Segment the core target."
    assert [m["role"] for m in second["messages"]] == ["user"]  # demo.py build_messages: no system message
    assert (second["temperature"], second["top_p"], second["repeat_penalty"]) == (0.1, 0.001, 1.05)
    crop = image_of(second)
    assert crop.size == SENT_SIZE
    # content: the red square's crop-relative place (20..220, 21..221 of 239x241), stretched to 1280x1312
    sx, sy = SENT_SIZE[0] / 239, SENT_SIZE[1] / 241
    assert np.allclose(crop.getpixel((int(120 * sx), int(121 * sy))), RED, atol=12)
    assert not np.allclose(crop.getpixel((int(8 * sx), int(8 * sy))), RED, atol=60)  # outside: the blue field
    assert not np.allclose(crop.getpixel((int(230 * sx), int(232 * sy))), RED, atol=60)

    ext = r.model_extra["vlgate"]  # type: ignore[index]
    assert r.choices[0].message.content == POLYGON  # step 0's raw text
    assert ext["parse_errors"] == []
    assert [s["name"] for s in ext["pipeline"]["steps"]] == ["prompt", "core_target"]
    assert ext["pipeline"]["requests"] == 2
    (poly,) = ext["polygons"]
    assert poly["bbox"] == pytest.approx([400.39, 299.29, 599.61, 500.14], abs=0.01)
    (mask,) = ext["masks"]
    assert mask["label"] == "the red square" and mask["rle"]["size"] == [700, 1000]
    pixels = decode_coco(mask["rle"])
    assert mask["area"] == int(pixels.sum())
    assert red_iou(pixels) > 0.9  # the crop's red cells land on the red square of the user's picture
    ys, xs = np.nonzero(pixels)
    assert mask["bbox"] == [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
    assert REGION[0] <= xs.min() and xs.max() < REGION[2] and REGION[1] <= ys.min() and ys.max() < REGION[3]
    assert r.usage is not None and r.usage.total_tokens == 10  # both requests counted


def test_open_set_segment_three_steps_in_parallel(scripted) -> None:
    script = Script()
    gw, fb = scripted(script, delay_s=0.4)
    r = ask(gw, {"name": "segment"})
    reqs = requests(fb)
    prompts = [prompt_of(q) for q in reqs]
    assert prompts == ["Segment all objects in this image.",
                       "Detect every objects that belongs to the following categories: green thing,red thing",
                       *["Segment the core target."] * 3]
    assert max(script.core_times) - min(script.core_times) < 0.3  # three at once, not one after another
    # one crop per box (they arrive in any order: they run at once); the red square's is refer_segment's crop
    assert SENT_SIZE in [image_of(q).size for q in reqs[2:]]
    ext = r.model_extra["vlgate"]  # type: ignore[index]
    assert ext["parse_errors"] == []
    assert {b["label"] for b in ext["boxes"]} == {"green thing", "red thing"}
    by_label = {m["label"]: m for m in ext["masks"]}
    assert set(by_label) == {"red thing"}  # the green crop has no red cells; <OTHERS> is no class
    assert by_label["red thing"]["value"] == 2  # class ids follow the first answer's order, from 1
    assert red_iou(decode_coco(by_label["red thing"]["rle"])) > 0.8
    assert ext["pipeline"]["requests"] == 5


def test_failing_step_keeps_what_was_gathered(scripted) -> None:
    gw, _ = scripted(Script(fail_green=True))
    r = ask(gw, {"name": "segment"})
    ext = r.model_extra["vlgate"]  # type: ignore[index]
    assert any(e.startswith("core_target[") for e in ext["parse_errors"]), ext["parse_errors"]
    assert ext["pipeline"]["steps"][-1]["failed"] == 1
    assert ext["masks"] and ext["boxes"]  # the other crops still count


def test_stream_sends_the_result_in_the_last_chunk_and_overlay(scripted) -> None:
    gw, fb = scripted(Script())
    chunks = list(ask(gw, {"name": "refer_segment", "expression": "red", "overlay": True}, stream=True,
                      stream_options={"include_usage": True}))
    assert all(q.get("stream") is not True for q in requests(fb))  # steps are plain requests
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == POLYGON
    last = chunks[-1]
    assert last.usage is not None and last.usage.total_tokens == 10
    ext = last.model_extra["vlgate"]  # type: ignore[index]
    assert ext["masks"][0]["label"] == "red"
    assert ext["overlay"].startswith("data:image/png;base64,")
    assert all("vlgate" not in (c.model_extra or {}) for c in chunks[:-1])


def test_classes_segment_is_one_request(scripted) -> None:
    gw, fb = scripted(Script())
    ask(gw, {"name": "segment", "classes": ["a", "b"]})
    assert len(requests(fb)) == 1


def test_deadline_cuts_the_pipeline_and_keeps_the_first_answers(scripted) -> None:
    gw, _ = scripted(Script(core_late_s=30))
    t = time.monotonic()
    r = ask(gw, {"name": "segment"})  # step 0 and detect answer at once, the core targets too late
    assert time.monotonic() - t < 10
    ext = r.model_extra["vlgate"]  # type: ignore[index]
    assert any("deadline" in e and "core_target" in e for e in ext["parse_errors"]), ext["parse_errors"]
    assert [s["name"] for s in ext["pipeline"]["steps"]] == ["prompt", "detect", "core_target"]
    assert len(ext["boxes"]) == 3  # detect's answer is kept
    assert [m["label"] for m in ext["masks"]] == ["green thing", "red thing"]  # step 0's masks stand


def test_json_object_puts_the_pipeline_result_in_content(scripted) -> None:
    gw, _ = scripted(Script())
    r = ask(gw, {"name": "refer_segment", "expression": "red"}, response_format={"type": "json_object"})
    data = json.loads(r.choices[0].message.content or "")
    assert data["masks"][0]["label"] == "red" and data["pipeline"]["requests"] == 2


def test_nothing_found_ends_the_pipeline(scripted) -> None:
    gw, fb = scripted(Script(polygon="There is no such thing in the image."))
    r = client(gw).chat.completions.create(
        model="youtu-vl:refer_segment", extra_body={"preset": {"expression": "a unicorn"}},
        messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": png_data_url(picture())}}]}])
    ext = r.model_extra["vlgate"]  # type: ignore[index]
    assert len(requests(fb)) == 1  # no polygon: no crop to segment (demo.py returns the first answer)
    assert ext["polygons"] == [] and ext["masks"] == [] and ext["parse_errors"] == []
    assert ext["pipeline"]["steps"][-1] == {**ext["pipeline"]["steps"][-1], "name": "core_target", "requests": 0}


@pytest.mark.slow
def test_gateway_run_presets_against_a_real_llama_server(llama_server, tmp_path) -> None:
    """The self-run path (pipeline, overlay) speaks to a real llama-server; its random answers are no polygon."""
    srv = llama_server(slots=2, ctx=2048, mmproj=True)
    gw = GatewayProcess({"backends": [{"url": srv.url}]}, tmp_path).start()
    try:
        gw.wait_ready()
        messages = [{"role": "user", "content": [{"type": "image_url",
                                                  "image_url": {"url": png_data_url(picture((96, 64)))}}]}]
        r = client(gw).chat.completions.create(model="youtu-vl", messages=messages, max_tokens=8, extra_body={
            "preset": {"name": "refer_segment", "expression": "the red square", "overlay": True}})
        ext = r.model_extra["vlgate"]  # type: ignore[index]
        assert ext["pipeline"]["steps"][0]["name"] == "prompt" and ext["overlay"].startswith("data:image/")
        assert r.usage is not None and r.usage.completion_tokens > 0
        chunks = list(client(gw).chat.completions.create(model="youtu-vl:detect", messages=messages, max_tokens=8,
                                                         stream=True, extra_body={"preset": {"overlay": True}}))
        assert chunks[-1].model_extra["vlgate"]["overlay"].startswith("data:image/")  # type: ignore[index]
    finally:
        gw.stop()
