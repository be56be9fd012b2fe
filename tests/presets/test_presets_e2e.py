"""Presets end to end: what reaches the backend, and the structured answer the client gets back."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import httpx
import openai
import pytest
from PIL import Image

from support.fakebackend import FakeBackend
from support.gateway_process import GatewayProcess

BOX_REPLY = "<ref>dog</ref><box><x_100><y_200><x_300><y_400></box><ref>cat</ref><box><x_0><y_0><x_2047><y_2047></box>"


def jpeg_data_url(size: tuple[int, int]) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 120, 200)).save(buf, "JPEG")
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def image_message(size: tuple[int, int] = (1000, 700), text: str | None = None) -> list[dict]:
    parts: list[dict] = [{"type": "image_url", "image_url": {"url": jpeg_data_url(size)}}]
    if text:
        parts.append({"type": "text", "text": text})
    return [{"role": "user", "content": parts}]


@pytest.fixture
def scripted(tmp_path: Path):
    fb = FakeBackend(reply=BOX_REPLY).start()
    gw = GatewayProcess({"backends": [{"url": fb.url}]}, tmp_path).start()
    gw.wait_ready()
    yield gw, fb
    gw.stop()
    fb.stop()


def client(gw: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0, _strict_response_validation=True)


def sent_body(fb: FakeBackend) -> dict:
    return json.loads(fb.chat_requests()[-1].body)


def test_detect_prompt_sampling_and_boxes_in_original_pixels(scripted) -> None:
    gw, fb = scripted
    r = client(gw).chat.completions.create(model="youtu-vl", messages=image_message(), extra_body={"preset": "detect"})
    body = sent_body(fb)
    assert body["messages"][0] == {"role": "system", "content": "You are a helpful assistant."}
    parts = body["messages"][-1]["content"]
    assert parts[0]["type"] == "image_url" and parts[0]["image_url"]["url"].startswith("data:image/")
    assert parts[-1] == {"type": "text", "text": "Detect all objects in the provided image."}
    assert (body["temperature"], body["top_p"], body["repeat_penalty"]) == (0.1, 0.001, 1.05)
    assert "preset" not in body
    # the image the backend got is already on the model grid: 1000x700 -> 1024x704
    sent = Image.open(io.BytesIO(base64.b64decode(parts[0]["image_url"]["url"].split(",", 1)[1])))
    assert sent.size == (1024, 704)
    assert r.choices[0].message.content == BOX_REPLY  # raw text untouched
    ext = r.model_extra["vlgate"]  # type: ignore[index]
    assert ext["preset"] == "detect"
    assert ext["image"] == {"width": 1000, "height": 700, "model_width": 1024, "model_height": 704}
    dog, cat = ext["boxes"]
    assert dog["label"] == "dog"
    assert dog["bbox"] == pytest.approx([100 * 1000 / 1024, 200 * 700 / 704, 300 * 1000 / 1024, 400 * 700 / 704],
                                        abs=0.01)
    assert cat["bbox"] == pytest.approx([0, 0, 1000, 700])  # clamped to the image
    assert ext["parse_errors"] == []


def test_detect_classes_and_sampling_override(scripted) -> None:
    gw, fb = scripted
    client(gw).chat.completions.create(model="youtu-vl", messages=image_message(), temperature=0.7,
                                       extra_body={"preset": {"name": "detect", "classes": ["dog", "cat"]}})
    body = sent_body(fb)
    assert body["temperature"] == 0.7 and body["top_p"] == 0.001
    text = body["messages"][-1]["content"][-1]["text"]
    assert text.startswith("Detect every objects that belongs to the following categories:")
    assert "dog" in text and "cat" in text


def test_virtual_model_ground_and_stream_last_chunk(scripted) -> None:
    gw, fb = scripted
    chunks = list(client(gw).chat.completions.create(
        model="youtu-vl:ground", stream=True, messages=image_message(text="the dog on the left")))
    body = sent_body(fb)
    assert body["model"] == "youtu-vl"
    assert body["messages"][-1]["content"][-1]["text"] == (
        "Please provide the bounding box coordinate of the region this sentence describes: the dog on the left")
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == BOX_REPLY
    ext = chunks[-1].model_extra["vlgate"]  # type: ignore[index]
    assert ext["boxes"][0]["label"] == "dog"
    assert all("vlgate" not in (c.model_extra or {}) for c in chunks[:-1])


def test_json_object_puts_structure_in_content(scripted) -> None:
    gw, fb = scripted
    r = client(gw).chat.completions.create(model="youtu-vl:detect", messages=image_message(),
                                           response_format={"type": "json_object"})
    assert "response_format" not in sent_body(fb)
    data = json.loads(r.choices[0].message.content or "")
    assert data["boxes"][0]["label"] == "dog"


def test_unknown_preset_and_bad_params(scripted) -> None:
    gw, fb = scripted
    before = len(fb.chat_requests())
    with pytest.raises(openai.NotFoundError) as exc:
        client(gw).chat.completions.create(model="youtu-vl", messages=image_message(),
                                           extra_body={"preset": "teleport"})
    assert "detect" in exc.value.message
    with pytest.raises(openai.BadRequestError) as bad:
        client(gw).chat.completions.create(model="youtu-vl", messages=image_message(),
                                           extra_body={"preset": {"name": "detect", "classes": 5}})
    assert bad.value.body["param"].startswith("preset")  # type: ignore[index]
    assert len(fb.chat_requests()) == before


def test_models_and_presets_listing(scripted) -> None:
    gw, _ = scripted
    ids = [m.id for m in client(gw).models.list().data]
    for name in ("detect", "ground", "segment", "refer_segment", "depth", "pose", "ocr", "gui", "describe"):
        assert f"youtu-vl:{name}" in ids
    presets = httpx.get(gw.url + "/v1/presets").json()["data"]
    assert {p["name"] for p in presets} >= {"detect", "ground", "depth"}


@pytest.mark.slow
def test_preset_sampling_reaches_real_llama_server(llama_server, tmp_path: Path) -> None:
    srv = llama_server(slots=1, ctx=2048, mmproj=True)
    gw = GatewayProcess({"backends": [{"url": srv.url}]}, tmp_path).start()
    try:
        gw.wait_ready()
        r = client(gw).chat.completions.create(model="youtu-vl:detect", max_tokens=5,
                                               messages=image_message((64, 48)))
        assert r.model_extra["vlgate"]["preset"] == "detect"  # type: ignore[index]
        params = httpx.get(srv.url + "/slots").json()[0]["params"]
        assert params["temperature"] == pytest.approx(0.1)
        assert params["top_p"] == pytest.approx(0.001)
        assert params["repeat_penalty"] == pytest.approx(1.05)
    finally:
        gw.stop()
