"""Draw the README's overlay pictures with `vlgate ask`, from SCRIPTED answers (no model runs).

A fake backend (tests/support/fakebackend.py) answers each preset's prompt the way Youtu-VL formats its
answers, with coordinates read off the synthetic scene below; `vlgate serve` runs the presets (pipelines
included) and `vlgate ask` draws the overlays. The pictures show what the gateway draws, not what the model
would find. Run from the repository root: `python docs/overlays/make_overlays.py` (writes docs/overlays/*.png).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from support.pipeline_answers import image_of, prompt_of, rle_text, scripted_gateway

SIZE = (640, 400)
CAR, SUN, HOUSE = (360, 250, 560, 330), (60, 40, 140, 120), (80, 180, 250, 330)
JOINTS = [(300, 360), (300, 320), (295, 280), (315, 280), (320, 320), (325, 360), (305, 280), (305, 220),
          (305, 205), (305, 180), (270, 280), (280, 250), (290, 220), (320, 220), (335, 250), (345, 275)]


def scene() -> Image.Image:
    im = Image.new("RGB", SIZE, (150, 200, 240))
    d = ImageDraw.Draw(im)
    d.rectangle([0, 300, SIZE[0], SIZE[1]], fill=(90, 160, 80))
    d.ellipse(SUN, fill=(250, 210, 60))
    d.rectangle(HOUSE, fill=(200, 170, 130))
    d.polygon([(70, 180), (165, 120), (260, 180)], fill=(140, 70, 50))
    d.rectangle(CAR, fill=(40, 70, 190))
    for a, b in [(0, 1), (1, 2), (3, 4), (4, 5), (2, 7), (3, 7), (7, 9), (10, 11), (11, 12), (12, 7), (13, 14),
                 (14, 15), (13, 7)]:
        d.line([JOINTS[a], JOINTS[b]], fill=(40, 40, 40), width=5)
    return im


class Script:
    """Model-style answers in the coordinates of the image each request carries."""

    def __call__(self, req: dict[str, Any]) -> str:
        if "messages" not in req:
            return "?"
        prompt, im = prompt_of(req), image_of(req)
        sx, sy = im.width / SIZE[0], im.height / SIZE[1]

        def box(b: tuple[int, int, int, int]) -> str:
            return (f"<box><x_{round(b[0] * sx)}><y_{round(b[1] * sy)}>"
                    f"<x_{round(b[2] * sx)}><y_{round(b[3] * sy)}></box>")

        if prompt == "Segment the core target.":  # the cells coloured like the crop's centre
            gw, gh = im.width // 16, im.height // 16
            small = np.asarray(im.resize((gw, gh), Image.Resampling.NEAREST)).astype(int)
            near = np.abs(small - small[gh // 2, gw // 2]).sum(axis=2) < 40
            return "<ref><BG></ref><ref><FG></ref><mask>" + rle_text(near.astype(int)) + "</mask>"
        if prompt.startswith("Can you segment"):
            x1, y1, x2, y2 = CAR
            pts = [(x1, y1), (x2, y1), (x2, y2), (x1, y2)]
            return "<ins><poly>" + "".join(f"<x_{round(x * sx)}><y_{round(y * sy)}>" for x, y in pts) + "</poly></ins>"
        if prompt == "Segment all objects in this image.":
            cells = (im.width // 16) * (im.height // 16)  # all <OTHERS>: the classes are what the pipeline needs
            return f"<ref>car</ref><ref>house</ref><ref><OTHERS></ref><mask>(2,{cells})</mask>"
        if prompt.startswith("Detect every objects"):
            return f"<ref>car</ref>{box(CAR)}<ref>house</ref>{box(HOUSE)}"
        if prompt.startswith("Detect all objects"):
            return f"<ref>car</ref>{box(CAR)}<ref>sun</ref>{box(SUN)}<ref>house</ref>{box(HOUSE)}"
        if prompt.startswith("Detect all persons"):
            kpts = "".join(f"<kpt><x_{round(x * sx)}><y_{round(y * sy)}><v_1></kpt>" for x, y in JOINTS)
            return f"<person>{box((255, 170, 355, 365))}{kpts}</person>"
        if prompt == "Estimate the depth.":
            gw, gh = im.width // 16, im.height // 16
            rows = np.linspace(900, 100, gh).astype(int)  # far at the top, near at the bottom (scripted)
            return "<depth><mask>" + rle_text(np.repeat(rows[:, None], gw, axis=1)) + "</mask>"
        return "?"


def main() -> None:
    out = ROOT / "docs" / "overlays"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        scene().save(work / "scene.png")
        with scripted_gateway(Script(), work) as gw:
            for preset, extra in [("detect", []), ("refer_segment", ["--expression", "the blue car"]),
                                  ("segment", []), ("pose", []), ("depth", [])]:
                subprocess.run([sys.executable, "-m", "vlgate.cli", "ask", preset, str(work / "scene.png"),
                                "--url", gw.url, "--out", str(out / f"{preset}.png"), *extra],
                               check=True, stdout=subprocess.DEVNULL)

if __name__ == "__main__":
    main()
