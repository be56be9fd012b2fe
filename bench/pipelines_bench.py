"""What a pipeline preset costs on top of its model calls: backend requests and added latency per preset.

`vlgate serve` in front of a scripted backend that answers at once (tests/support/fakebackend.py), so the
time measured is the gateway's own: crops, image normalization of each crop, parsing, pasting masks into the
user's image, the overlay. Baseline: `detect` (one request, same image). Run from the repository root:
    python bench/pipelines_bench.py [--runs 15]
"""

from __future__ import annotations

import argparse
import base64
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from support.pipeline_answers import (
    RED_BOX,
    core_answer,
    image_of,
    picture,
    prompt_of,
    rle_text,
    scripted_gateway,
)

BOXES = [RED_BOX, (100, 80, 260, 200), (700, 500, 760, 560)]  # three objects for open-set


SCRIPT_S = [0.0]  # time the fake backend spends making answers (decoding crops): not the gateway's


def script(req: dict[str, Any]) -> str:
    t = time.perf_counter()
    try:
        return answer(req)
    finally:
        SCRIPT_S[0] += time.perf_counter() - t


def answer(req: dict[str, Any]) -> str:
    if "messages" not in req:
        return "?"
    prompt, im = prompt_of(req), image_of(req)
    sx, sy = im.width / 1000, im.height / 700

    def box(b: tuple[int, ...]) -> str:
        return f"<box><x_{round(b[0] * sx)}><y_{round(b[1] * sy)}><x_{round(b[2] * sx)}><y_{round(b[3] * sy)}></box>"

    if prompt == "Segment the core target.":
        return core_answer(im)
    if prompt.startswith("Can you segment"):
        x1, y1, x2, y2 = RED_BOX
        return "<ins><poly>" + "".join(f"<x_{round(x * sx)}><y_{round(y * sy)}>"
                                       for x, y in [(x1, y1), (x2, y1), (x2, y2), (x1, y2)]) + "</poly></ins>"
    if prompt == "Segment all objects in this image.":
        grid = np.zeros((im.height // 16, im.width // 16), dtype=int)
        return "<ref>red</ref><ref>green</ref><ref><OTHERS></ref><mask>" + rle_text(grid + 2) + "</mask>"
    return "".join(f"<ref>red</ref>{box(b)}" for b in BOXES)  # detect (all, or the classes)


def data_url(im: Image.Image, fmt: str) -> str:
    buf = io.BytesIO()
    im.save(buf, fmt, quality=90)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode()


def variants(size: tuple[int, int], fmt: str, runs: int) -> list[str]:
    """One picture per run (a pixel differs): no request finds its image or crop in the gateway's cache."""
    base = picture().resize(size, Image.Resampling.NEAREST)
    out = []
    for i in range(runs):
        im = base.copy()
        im.putpixel((i, 0), (i, i, i))
        out.append(data_url(im, fmt))
    return out


def timed(client: httpx.Client, urls: list[str], preset: dict[str, Any]) -> tuple[float, int]:
    times, calls = [], 1
    for url in urls:
        body = {"model": "youtu-vl", "preset": preset,
                "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]}
        t, s0 = time.perf_counter(), SCRIPT_S[0]
        r = client.post("/v1/chat/completions", json=body)
        times.append(time.perf_counter() - t - (SCRIPT_S[0] - s0))
        r.raise_for_status()
        ext = r.json()["vlgate"]
        assert not ext["parse_errors"], ext["parse_errors"]
        calls = (ext.get("pipeline") or {}).get("requests", 1)
    return statistics.median(times) * 1000, calls


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args()
    images = {"1000x700 PNG": ((1000, 700), "PNG"), "4000x2800 JPEG": ((4000, 2800), "JPEG")}
    cases = [("detect (baseline)", {"name": "detect"}),
             ("refer_segment", {"name": "refer_segment", "expression": "red"}),
             ("segment (open-set, 3 objects)", {"name": "segment"}),
             ("refer_segment + overlay", {"name": "refer_segment", "expression": "red", "overlay": True})]
    with (tempfile.TemporaryDirectory() as tmp, scripted_gateway(script, Path(tmp)) as gw,
          httpx.Client(base_url=gw.url, timeout=120) as client):
        for name, (size, fmt) in images.items():
            timed(client, variants(size, fmt, 2), {"name": "detect"})  # warm up
            print(f"\n{name}: median of {args.runs}, the fake backend's own time taken out")
            print(f"{'preset':32} {'backend calls':>13} {'median ms':>10} {'added ms':>9}")
            base = None
            for label, preset in cases:
                ms, calls = timed(client, variants(size, fmt, args.runs), preset)
                base = ms if base is None else base
                print(f"{label:32} {calls:>13} {ms:>10.1f} {ms - base:>9.1f}")


if __name__ == "__main__":
    main()
