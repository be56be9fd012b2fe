"""Pipelines hold full-size pixels for a few requests at once: a handful of open-set `segment` requests on
large flat PNGs (a few hundred KB each on the wire) cannot grow the gateway by gigabytes."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from PIL import Image

from support.fakebackend import FakeBackend
from support.gateway_process import GatewayProcess
from support.pipeline_answers import OpenSetScript, png_data_url

SIZE = (6000, 5000)  # 30 MP: 90 MB of RGB, 60 MB of label map per pipeline at full size
REQUESTS = 4


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def run(tmp_path: Path, full_size: int, url: str) -> float:
    tmp_path.mkdir(parents=True, exist_ok=True)
    fb = FakeBackend(script=OpenSetScript(xs=(100, 700, 1300), core_delay_s=0.3), slots=16).start()
    gw = GatewayProcess({"backends": [{"url": fb.url}],
                         "gateway": {"pipeline_full_size": full_size, "request_timeout_s": 120},
                         "images": {"limits": {"max_request_bytes": 64 * 1024 * 1024}}}, tmp_path)
    gw.start().wait_ready()
    try:
        body = {"model": "youtu-vl", "preset": "segment",
                "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]}
        with ThreadPoolExecutor(REQUESTS) as pool:
            answers = list(pool.map(lambda _: httpx.post(gw.url + "/v1/chat/completions", json=body, timeout=180),
                                    range(REQUESTS)))
        assert [a.status_code for a in answers] == [200] * REQUESTS, answers[0].text
        assert all(a.json()["vlgate"]["pipeline"]["requests"] == 5 for a in answers)
        assert gw.proc is not None
        return peak_rss_mb(gw.proc.pid)
    finally:
        gw.stop()
        fb.stop()


@pytest.mark.slow
def test_full_size_pipelines_are_bounded(tmp_path: Path) -> None:
    url = png_data_url(Image.new("RGB", SIZE, (20, 90, 200)))
    assert len(url) < 1_000_000  # small on the wire
    bounded = run(tmp_path / "one", 1, url)
    unbounded = run(tmp_path / "all", REQUESTS, url)  # today's behaviour: every pipeline at full size at once
    print(f"\n[memory] {REQUESTS} segment pipelines on {SIZE[0]}x{SIZE[1]} flat PNGs: peak RSS {bounded:.0f} MB with "
          f"pipeline_full_size 1, {unbounded:.0f} MB with {REQUESTS}")
    assert bounded < unbounded - 400  # measured: ~240 MB a full-size pipeline at 30 MP, 3 fewer at once
