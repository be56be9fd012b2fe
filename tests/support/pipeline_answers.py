"""Shared by the pipeline tests: a test picture, model-style answers, and decoding what a backend was sent."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from support.fakebackend import FakeBackend
from support.gateway_process import GatewayProcess

BLUE, RED, GREEN = (20, 60, 200), (230, 30, 30), (40, 200, 60)
RED_BOX = (400, 300, 600, 500)  # in the 1000x700 picture
GREEN_BOX = (100, 80, 260, 200)


def picture(size: tuple[int, int] = (1000, 700)) -> Image.Image:
    """A blue field with a red and a green rectangle (lossless: sent as PNG)."""
    im = Image.new("RGB", size, BLUE)
    im.paste(RED, RED_BOX)
    im.paste(GREEN, GREEN_BOX)
    return im


def png_data_url(im: Image.Image) -> str:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def rle_text(flat: list[int] | np.ndarray) -> str:
    """Model-style `(value,count)` runs."""
    out, prev, n = [], None, 0
    for v in list(np.asarray(flat).reshape(-1)):
        if v == prev:
            n += 1
            continue
        if prev is not None:
            out.append(f"({prev},{n})")
        prev, n = v, 1
    out.append(f"({prev},{n})")
    return "".join(out)


def prompt_of(req: dict[str, Any]) -> str:
    return req["messages"][-1]["content"][-1]["text"]


def image_of(req: dict[str, Any]) -> Image.Image:
    url = req["messages"][-1]["content"][0]["image_url"]["url"]
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB")


def requests(fb: FakeBackend) -> list[dict[str, Any]]:
    return [json.loads(s.body) for s in fb.seen if s.path.startswith("/v1/chat/completions")]


def decode_coco(rle: dict[str, Any]) -> np.ndarray:
    h, w = rle["size"]
    values = np.arange(len(rle["counts"])) % 2 == 1
    return np.repeat(values, rle["counts"]).reshape(w, h).T


def core_answer(crop: Image.Image, fg_first: bool = True) -> str:
    """A core-target answer on the crop's patch grid: the red cells are the target."""
    gw, gh = crop.width // 16, crop.height // 16
    small = np.asarray(crop.resize((gw, gh), Image.Resampling.NEAREST)).astype(int)
    red = (small[..., 0] > 150) & (small[..., 1] < 100)
    fg, bg = (0, 1) if fg_first else (1, 0)
    refs = "<ref><FG></ref><ref><BG></ref>" if fg_first else "<ref><BG></ref><ref><FG></ref>"
    return refs + "<mask>" + rle_text(np.where(red, fg, bg)) + "</mask>"


@contextmanager
def scripted_gateway(
    script: Callable[[dict[str, Any]], str | int], workdir: Path, **fake: Any
) -> Iterator[GatewayProcess]:
    """`vlgate serve` in front of one fake backend answering with `script` (for docs and benches)."""
    fb = FakeBackend(script=script, slots=4, **fake).start()
    gw = GatewayProcess({"backends": [{"url": fb.url}]}, workdir).start()
    try:
        gw.wait_ready()
        yield gw
    finally:
        gw.stop()
        fb.stop()


class OpenSetScript:
    """Answers an open-set `segment` pipeline: one class, `boxes` detected (model pixels, 100 wide), and a
    core-target mask per box `core_delay_s` late; remembers when each core-target request arrived."""

    def __init__(self, xs: tuple[int, ...] = (100, 300, 500), core_delay_s: float = 0.0,
                 core: Callable[[dict[str, Any]], str] | None = None) -> None:
        self.xs, self.core_delay_s = xs, core_delay_s
        self.core = core or (lambda req: "<ref><FG></ref><ref><BG></ref><mask>(0,100)(1,100)</mask>")
        self.core_arrivals: list[float] = []
        self.lock = threading.Lock()

    def __call__(self, req: dict[str, Any]) -> Any:
        if "messages" not in req:  # the gateway's own probes (/tokenize ...)
            return "?"
        prompt = prompt_of(req)
        if prompt == "Segment all objects in this image.":
            return "<ref>red thing</ref><mask>(0,2816)</mask>"
        if prompt.startswith("Detect every objects"):
            return "".join(f"<ref>red thing</ref><box><x_{x}><y_100><x_{x + 100}><y_200></box>" for x in self.xs)
        if prompt == "Segment the core target.":
            with self.lock:
                self.core_arrivals.append(time.monotonic())
            return (self.core_delay_s, self.core(req)) if self.core_delay_s else self.core(req)
        return "?"
