"""Preset registry: loading, user overrides, validation errors and the request-body rewrite."""

from __future__ import annotations

import copy
import json

import pytest

from vlgate.config import ConfigError, parse_config
from vlgate.errors import APIError
from vlgate.images.types import ImageInfo
from vlgate.presets import PresetRegistry

SERVED = "youtu-vl"
IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
BUILTINS = ["describe", "vqa", "ocr", "count", "detect", "ground", "segment", "refer_segment", "depth", "pose", "gui"]


@pytest.fixture(scope="module")
def reg() -> PresetRegistry:
    return PresetRegistry.load({})


def chat(text: str | None = "hello", image: bool = True, **extra) -> dict:
    parts = []
    if text is not None:
        parts.append({"type": "text", "text": text})
    if image:
        parts.append(copy.deepcopy(IMAGE))
    return {"model": SERVED, "messages": [{"role": "user", "content": parts}], **extra}


def user_content(body: dict) -> list:
    return [m for m in body["messages"] if m["role"] == "user"][-1]["content"]


def prompt_of(body: dict) -> str:
    return user_content(body)[-1]["text"]


# ---------------------------------------------------------------- loading


def test_builtins_load_with_official_prompts(reg: PresetRegistry):
    assert reg.names() == BUILTINS
    d = {p["name"]: p for p in reg.describe(SERVED)}
    assert d["detect"]["model"] == "youtu-vl:detect"
    assert d["detect"]["params"]["classes"]["type"] == "string_list"
    assert d["ground"]["params"]["expression"]["required"] is True
    assert d["depth"]["prompt"] == [{"when": [], "text": "Estimate the depth.", "steps": 1,
                                     "origin": "official: demo.py (Depth Estimation)"}]
    assert d["ocr"]["prompt"][0]["text"] == "Read all text present in the image."
    # every prompt says where it comes from; the gateway's own wordings say so
    for name in ("describe", "ocr", "count"):
        assert all(v["origin"].startswith("vlgate's own") for v in d[name]["prompt"]), name
    for name in ("detect", "ground", "segment", "refer_segment", "depth", "pose"):
        assert all(v["origin"].startswith("official: demo.py") for v in d[name]["prompt"]), name
    assert [v["steps"] for v in d["segment"]["prompt"]] == [1, 3]  # classes: one request; open-set: three steps
    assert d["refer_segment"]["prompt"][0]["steps"] == 2
    for p in d.values():
        assert p["system"] == "You are a helpful assistant."
        assert p["sampling"]["temperature"] == 0.1 and p["sampling"]["top_p"] == 0.001
        assert p["sampling"]["repeat_penalty"] == 1.05
    assert d["pose"]["parser"] == ["pose"] and d["segment"]["parser"] == ["masks", "polygons"]


def test_user_override_merges_fields_and_adds_presets():
    reg = PresetRegistry.load({
        "detect": {"sampling": {"temperature": 0.3}, "description": "mine"},
        "ocr": {"enabled": False},
        "table": {"extends": "ocr", "prompt": "Convert the table in the image to Markdown."},
        "caption": {"prompt": "Write a one-line caption.", "image": "required", "system": None},
    })
    assert "ocr" not in reg.names()
    assert reg.names()[-2:] == ["table", "caption"]
    d = {p["name"]: p for p in reg.describe()}
    assert d["detect"]["sampling"] == {"temperature": 0.3, "top_p": 0.001, "repeat_penalty": 1.05}
    assert d["detect"]["description"] == "mine" and d["detect"]["source"] == "config"
    assert d["detect"]["prompt"][1]["text"] == "Detect all objects in the provided image."
    assert d["table"]["system"] == "You are a helpful assistant."  # inherited from ocr, though ocr is disabled
    assert d["table"]["user_text"] == "prompt"
    assert d["caption"]["system"] is None and d["caption"]["parser"] == ["none"] and d["caption"]["sampling"] == {}


def test_user_presets_from_the_config_file_section():
    cfg = parse_config({"presets": {"detect": {"sampling": {"max_tokens": 500}}}})
    reg = PresetRegistry.load(cfg.presets)
    body = chat()
    reg.resolve(body, "youtu-vl:detect", SERVED)
    assert body["max_tokens"] == 500 and body["temperature"] == 0.1


def test_bad_preset_in_config_file_names_the_path():
    with pytest.raises(ConfigError) as exc:
        parse_config({"presets": {"detect": {"sampling": {"temp": 1}}}}, "my.yaml")
    assert "my.yaml: presets.detect.sampling.temp: unknown field" in str(exc.value)


@pytest.mark.parametrize(
    "user,needle",
    [
        ({"x": {"image": "required"}}, "presets.x.prompt: missing"),
        ({"x": {"prompt": "Find {thing}."}}, "presets.x.prompt[0]: {thing} is not a parameter"),
        ({"x": {"prompt": "a", "user_text": "fill:nope"}}, "presets.x.user_text"),
        ({"x": {"prompt": "a", "user_text": "shout"}}, "presets.x.user_text: 'shout'"),
        ({"x": {"prompt": "a", "parser": "xml"}}, "presets.x.parser"),
        ({"x": {"prompt": "a", "temperature": 1}}, "presets.x.temperature: unknown field"),
        ({"x": {"extends": "nope"}}, "no preset named 'nope'"),
        ({"a": {"extends": "b"}, "b": {"extends": "a"}}, "cycle"),
        ({"bad:name": {"prompt": "a"}}, "presets.bad:name: a preset name"),
        ({"x": "just a string"}, "presets.x: must be a mapping"),
    ],
)
def test_bad_user_presets_raise_clear_value_errors(user: dict, needle: str):
    with pytest.raises(ValueError) as exc:
        PresetRegistry.load(user)
    assert needle in str(exc.value)


# ---------------------------------------------------------------- selection


def test_no_preset_leaves_body_alone(reg: PresetRegistry):
    body = chat()
    before = copy.deepcopy(body)
    assert reg.resolve(body, SERVED, SERVED) is None
    assert body == before
    assert reg.resolve(body, "other-model:detect", SERVED) is None


def test_unknown_preset_is_404_naming_known_ones(reg: PresetRegistry):
    for body, model in ((chat(preset="nope"), SERVED), (chat(), "youtu-vl:nope")):
        with pytest.raises(APIError) as exc:
            reg.resolve(body, model, SERVED)
        e = exc.value
        assert e.status == 404 and e.code == "preset_not_found"
        assert "'nope'" in e.message and "detect" in e.message and "refer_segment" in e.message
    assert e.param == "model"


def test_virtual_model_selects_and_rewrites_model(reg: PresetRegistry):
    body = chat()
    run = reg.resolve(body, "youtu-vl:depth", SERVED)
    assert run.name == "depth" and body["model"] == SERVED
    assert prompt_of(body) == "Estimate the depth."


def test_object_form_with_virtual_model_and_conflict(reg: PresetRegistry):
    body = chat(preset={"classes": ["dog"]})
    assert reg.resolve(body, "youtu-vl:detect", SERVED).name == "detect"
    assert "preset" not in body
    with pytest.raises(APIError) as exc:
        reg.resolve(chat(preset="ocr"), "youtu-vl:detect", SERVED)
    assert exc.value.status == 400 and exc.value.param == "preset"


@pytest.mark.parametrize(
    "preset,param,needle",
    [
        ({"name": "detect", "classes": "  "}, "preset.classes", "must not be empty"),
        ({"name": "detect", "classes": [1, 2]}, "preset.classes", "must be a string"),
        ({"name": "detect", "classes": ["a"] * 201}, "preset.classes", "at most 200"),
        ({"name": "detect", "colour": "red"}, "preset.colour", "its parameters: classes"),
        ({"name": "ground"}, "preset.expression", "needs expression"),
        ({"name": "ground", "expression": 5}, "preset.expression", "must be a string"),
        ({"name": 3}, "preset.name", "required"),
        ({}, "preset.name", "required"),
        (["detect"], "preset", "must be a name or an object"),
    ],
)
def test_bad_params_are_400_with_the_field(reg: PresetRegistry, preset, param: str, needle: str):
    body = chat(text=None, preset=preset)
    with pytest.raises(APIError) as exc:
        reg.resolve(body, SERVED, SERVED)
    assert exc.value.status == 400
    assert exc.value.param == param
    assert needle in exc.value.message


# ---------------------------------------------------------------- body rewrite


def test_detect_rewrite_image_first_system_and_sampling(reg: PresetRegistry):
    body = chat("please find pets", preset={"name": "detect", "classes": ["dog", "cat"]})
    run = reg.resolve(body, SERVED, SERVED)
    assert body["messages"][0] == {"role": "system", "content": "You are a helpful assistant."}
    assert user_content(body) == [
        IMAGE,
        {"type": "text", "text": "Detect every objects that belongs to the following categories: dog,cat"},
    ]
    assert (body["temperature"], body["top_p"], body["repeat_penalty"]) == (0.1, 0.001, 1.05)
    assert run.parsers == ("boxes",) and run.json_content is False


def test_detect_all_objects_ignores_user_text(reg: PresetRegistry):
    body = chat("what is this?", preset="detect")
    reg.resolve(body, SERVED, SERVED)
    assert prompt_of(body) == "Detect all objects in the provided image."


def test_request_sampling_and_system_win(reg: PresetRegistry):
    body = chat(preset="describe", temperature=0.7, max_tokens=10)
    body["messages"].insert(0, {"role": "system", "content": "Be brief."})
    reg.resolve(body, SERVED, SERVED)
    assert body["temperature"] == 0.7 and body["top_p"] == 0.001 and body["max_tokens"] == 10
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    assert body["messages"][0]["content"] == "Be brief."
    assert prompt_of(body) == "Describe this image in detail.\nhello"


def test_segment_prompt_and_max_tokens_default(reg: PresetRegistry):
    body = chat(preset={"name": "segment", "classes": "road, sky ,tree"}, max_completion_tokens=99)
    reg.resolve(body, SERVED, SERVED)
    assert prompt_of(body) == "Segment: road, sky, tree., without the background class."
    assert "max_tokens" not in body  # the request's max_completion_tokens counts as set
    body = chat(preset="segment")
    reg.resolve(body, SERVED, SERVED)
    assert prompt_of(body) == "Segment all objects in this image." and body["max_tokens"] == 12280


def test_user_text_fills_expression_and_question(reg: PresetRegistry):
    body = chat("the black cat", preset="ground")
    reg.resolve(body, SERVED, SERVED)
    assert prompt_of(body) == (
        "Please provide the bounding box coordinate of the region this sentence describes: the black cat"
    )
    body = chat("ignored", preset={"name": "refer_segment", "expression": "hotdog on left"})
    reg.resolve(body, SERVED, SERVED)
    assert prompt_of(body) == 'Can you segment "hotdog on left" in this image?'
    with pytest.raises(APIError) as exc:
        reg.resolve(chat("x" * 1001, preset="ground"), SERVED, SERVED)
    assert exc.value.param == "preset.expression" and "longer than 1000" in exc.value.message
    body = chat("How many dogs?", preset="vqa")
    reg.resolve(body, SERVED, SERVED)
    assert prompt_of(body) == "How many dogs?"
    with pytest.raises(APIError) as exc:
        reg.resolve(chat(None, preset="vqa"), SERVED, SERVED)
    assert exc.value.param == "preset.question"


def test_count_user_question_or_object(reg: PresetRegistry):
    body = chat("How many dogs are in the photo?", preset="count")
    reg.resolve(body, SERVED, SERVED)
    assert prompt_of(body) == "How many dogs are in the photo?"
    body = chat("ignored", preset={"name": "count", "object": "cars"})
    reg.resolve(body, SERVED, SERVED)
    assert prompt_of(body) == "How many cars are there in the image? Answer with a number."


def test_gui_variants_pick_parser(reg: PresetRegistry):
    body = chat(None, preset="gui")
    assert reg.resolve(body, SERVED, SERVED).parsers == ()
    assert prompt_of(body).startswith("Describe this screen")
    body = chat(None, preset={"name": "gui", "target": "the login button"})
    assert reg.resolve(body, SERVED, SERVED).parsers == ("boxes", "points")
    assert prompt_of(body).endswith("describes: the login button")


def test_earlier_messages_and_multiple_parts_are_kept(reg: PresetRegistry):
    body = {
        "model": SERVED,
        "messages": [
            {"role": "user", "content": [copy.deepcopy(IMAGE), {"type": "text", "text": "first"}]},
            {"role": "assistant", "content": "ok"},
            {"role": "user",
             "content": [{"type": "text", "text": "a"}, copy.deepcopy(IMAGE), {"type": "text", "text": "b"}]},
        ],
        "preset": "ocr",
    }
    reg.resolve(body, SERVED, SERVED)
    assert body["messages"][1]["content"][1] == {"type": "text", "text": "first"}
    assert user_content(body) == [IMAGE, {"type": "text", "text": "a\nb"}]


def test_image_policy(reg: PresetRegistry):
    with pytest.raises(APIError) as exc:
        reg.resolve(chat(image=False, preset="detect"), SERVED, SERVED)
    assert exc.value.status == 400 and exc.value.param == "messages" and "needs an image" in exc.value.message
    body = chat(preset="pose")
    body["messages"][0]["content"].append(copy.deepcopy(IMAGE))
    with pytest.raises(APIError) as exc:
        reg.resolve(body, SERVED, SERVED)
    assert "at most 1 image" in exc.value.message
    body = {"model": SERVED, "messages": [{"role": "user", "content": "What is 2+2?"}], "preset": "vqa"}
    reg.resolve(body, SERVED, SERVED)  # vqa: image optional, string content becomes parts
    assert user_content(body) == [{"type": "text", "text": "What is 2+2?"}]


def test_json_object_handled_gateway_side(reg: PresetRegistry):
    body = chat(preset="detect", response_format={"type": "json_object"})
    run = reg.resolve(body, SERVED, SERVED)
    assert run.json_content is True and "response_format" not in body
    body = chat(preset="describe", response_format={"type": "json_object"})
    assert reg.resolve(body, SERVED, SERVED).json_content is False
    assert body["response_format"] == {"type": "json_object"}  # plain-text preset: forwarded upstream
    for extra, needle in (({"type": "json_schema", "json_schema": {}}, {}),
                          ({"type": "json_object"}, {"stream": True})):
        with pytest.raises(APIError) as exc:
            reg.resolve(chat(preset="detect", response_format=extra, **needle), SERVED, SERVED)
        assert exc.value.param == "response_format"


def test_request_fields_from_token_check(reg: PresetRegistry):
    reg2 = PresetRegistry.load({})
    reg2.request_fields = {"some_field": True}
    body = chat(preset="detect")
    reg2.resolve(body, SERVED, SERVED)
    assert body["some_field"] is True


# ---------------------------------------------------------------- answers


def test_finish_adds_extension_and_json_content(reg: PresetRegistry):
    body = chat(preset="detect", response_format={"type": "json_object"})
    run = reg.resolve(body, SERVED, SERVED)
    text = "<ref>dog</ref><box><x_64><y_32><x_320><y_160></box>"
    resp = {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}
    out = run.finish(resp, [ImageInfo("h", 1000, 500, 640, 320)])
    ext = out["vlgate"]
    assert ext == {
        "preset": "detect",
        "image": {"width": 1000, "height": 500, "model_width": 640, "model_height": 320},
        "boxes": [{"label": "dog", "bbox": [100.0, 50.0, 500.0, 250.0]}],
        "parse_errors": [],
    }
    assert json.loads(out["choices"][0]["message"]["content"]) == ext


def test_finish_raw_text_kept_and_truncation_reported(reg: PresetRegistry):
    run = reg.resolve(chat(preset="count"), SERVED, SERVED)
    resp = {"choices": [{"message": {"content": "There are 4 dogs"}, "finish_reason": "length"}]}
    out = run.finish(resp, [ImageInfo("h", 10, 10, 32, 32)])
    assert out["choices"][0]["message"]["content"] == "There are 4 dogs"
    assert out["vlgate"]["count"] == 4
    assert out["vlgate"]["parse_errors"] == [
        "output truncated (finish_reason=length): results may be incomplete; raise max_tokens"
    ]


def test_stream_extension(reg: PresetRegistry):
    run = reg.resolve(chat(preset="pose"), SERVED, SERVED)
    ext = run.stream_extension("<person><box><x_1><y_2><x_3><y_4></box>", [ImageInfo("h", 64, 64, 64, 64)])
    assert ext["preset"] == "pose"
    assert ext["persons"] == [{"bbox": [1, 2, 3, 4], "keypoints": []}]
    assert "person 0: 0 of 16 keypoints" in ext["parse_errors"]
