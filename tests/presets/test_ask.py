"""`vlgate ask` against a real `vlgate serve` whose backend answers like the model (scripted)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from support.fakebackend import FakeBackend
from support.gateway_process import GatewayProcess
from vlgate.presets.overlay import palette

# a box over the middle of any picture: model pixels of its grid, mapped back by the gateway
BOX = "<ref>thing</ref><box><x_{x1}><y_{y1}><x_{x2}><y_{y2}></box>"
KEY = "sekret"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory):
    fb = FakeBackend(reply=BOX.format(x1=64, y1=64, x2=192, y2=448)).start()
    gw = GatewayProcess({"backends": [{"url": fb.url}], "gateway": {"api_keys": [KEY]}},
                        tmp_path_factory.mktemp("gateway")).start()
    deadline = time.monotonic() + 30
    while httpx.get(gw.url + "/ready", headers={"Authorization": f"Bearer {KEY}"}).status_code != 200:
        assert time.monotonic() < deadline, gw.log()
        time.sleep(0.05)
    yield gw
    gw.stop()
    fb.stop()


def vlgate_ask(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vlgate.cli", "ask", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=120, check=False)


def rotated_photo(path: Path) -> None:
    """Stored 512x256 with EXIF orientation 6: upright it is 256x512."""
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (512, 256), (255, 255, 255)).save(path, "JPEG", exif=exif.tobytes(), quality=95)


def test_one_image_prints_json_and_writes_the_upright_overlay(gateway: GatewayProcess, tmp_path: Path) -> None:
    rotated_photo(tmp_path / "photo.jpg")
    r = vlgate_ask("detect", "photo.jpg", "--url", gateway.url, "--key", KEY, "--out", "seen.png", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    line = json.loads(r.stdout)
    assert line["ok"] is True and line["overlay"] == "seen.png"
    (box,) = line["result"]["boxes"]
    assert box["label"] == "thing" and box["bbox"] == [64, 64, 192, 448]  # upright 256x512 is its own grid
    assert "overlay" not in line["result"]
    im = Image.open(tmp_path / "seen.png").convert("RGB")
    assert im.size == (256, 512)  # the user's orientation, not the stored one
    edge = im.getpixel((64, 256))
    assert max(abs(a - b) for a, b in zip(edge, palette(0), strict=True)) < 40  # JPEG photo, converted to PNG


def test_a_folder_runs_concurrently_and_reports_failures_per_line(gateway: GatewayProcess, tmp_path: Path) -> None:
    folder = tmp_path / "uploads"
    folder.mkdir()
    for name in ("a.png", "b.png"):
        Image.new("RGB", (300, 200), (0, 0, 0)).save(folder / name)
    (folder / "broken.jpg").write_bytes(b"not a picture")
    (folder / "notes.txt").write_text("skipped: not an image")
    r = vlgate_ask("detect", str(folder), "--url", gateway.url, "--key", KEY, "--out", "pics", "--concurrency", "2",
                   cwd=tmp_path)
    assert r.returncode == 1  # one image failed
    lines = {Path(d["image"]).name: d for d in map(json.loads, r.stdout.splitlines())}
    assert set(lines) == {"a.png", "b.png", "broken.jpg"}
    assert lines["a.png"]["ok"] and lines["b.png"]["ok"]
    assert not lines["broken.jpg"]["ok"] and lines["broken.jpg"]["error"].startswith("400: ")
    pictures = sorted(p.name for p in (tmp_path / "pics").iterdir())
    assert len(pictures) == 2 and all(p.endswith(".detect.png") for p in pictures)


def test_wrong_key_is_reported(gateway: GatewayProcess, tmp_path: Path) -> None:
    Image.new("RGB", (64, 64)).save(tmp_path / "x.png")
    r = vlgate_ask("detect", "x.png", "--url", gateway.url, "--key", "wrong", "--no-overlay", cwd=tmp_path)
    assert r.returncode == 1
    assert "401: Incorrect API key" in json.loads(r.stdout)["error"]
