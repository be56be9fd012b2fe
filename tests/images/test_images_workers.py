"""The pixel work in worker processes (`images.pool: process`): the same output as in threads, errors still
400s, and a worker that dies is replaced."""

from __future__ import annotations

import copy
import os
import signal
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from support.images import body_with, data_url, encode, run, settings
from support.procs import children_of
from support.wait import wait_until
from vlgate.images import ImageError, ImageNormalizer, ImageSettings


def photo(seed: int) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (700, 900, 3), dtype=np.uint8)
    return encode(Image.fromarray(arr), "JPEG", quality=90)


def screenshot() -> bytes:
    img = Image.new("RGB", (1400, 900), (250, 250, 250))
    img.paste((30, 30, 30), (100, 100, 900, 140))
    return encode(img, "PNG")


def test_processes_and_threads_give_the_same_bytes() -> None:
    body = body_with(data_url(photo(1), "image/jpeg"), data_url(screenshot()))

    async def normalized(s: ImageSettings) -> tuple[list[str], str]:
        n = ImageNormalizer(s)
        try:
            b = copy.deepcopy(body)
            await n.normalize_body(b)
            return [p["image_url"]["url"] for p in b["messages"][1]["content"] if "image_url" in p], n.pixels.kind
        finally:
            await n.aclose()

    in_processes, kind = run(normalized(ImageSettings(pool="process")))
    in_threads, _ = run(normalized(settings()))
    assert kind == "process" and in_processes == in_threads
    assert in_processes[0].startswith("data:image/jpeg;base64,") and in_processes[1].startswith("data:image/x-tga")


def test_a_broken_image_is_a_400_from_a_worker_process() -> None:
    broken = photo(2)[:5000]  # a JPEG cut short: the worker's decoder refuses it

    async def go() -> ImageError:
        n = ImageNormalizer(ImageSettings(pool="process"))
        try:
            with pytest.raises(ImageError) as e:
                await n.normalize_body(body_with(data_url(broken + b"\0" * 70_000, "image/jpeg")))
            return e.value
        finally:
            await n.aclose()

    e = run(go())
    assert e.status == 400 and e.param == "messages[1].content[0].image_url"


def test_a_killed_worker_is_replaced() -> None:
    async def go() -> list[int]:
        n = ImageNormalizer(ImageSettings(workers=1, pool="process"))
        try:
            await n.normalize_body(body_with(data_url(photo(3), "image/jpeg")))
            pool = n.pixels._processes
            assert pool is not None
            pids = list(pool._processes)  # the worker processes concurrent.futures started
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            infos = await n.normalize_body(body_with(data_url(photo(4), "image/jpeg")))
            assert len(infos) == 1 and n.pixels._processes is not pool
            return pids
        finally:
            await n.aclose()

    killed = run(go())
    assert len(killed) == 1


@pytest.mark.slow
def test_a_gateway_with_worker_processes_answers_images_and_stops_them(llama_server_bin, tiny_model, tmp_path) -> None:
    """`vlgate serve` with `images.pool: process`: the spawned workers import the entry point again (it is
    guarded), answer, and end with the gateway."""
    import httpx

    from support.gateway_process import GatewayProcess
    from support.llama import LlamaServer

    server = LlamaServer(llama_server_bin, tiny_model.model, mmproj=tiny_model.mmproj, slots=1, ctx=1024,
                         log_dir=tmp_path / "llama").start()
    gw = GatewayProcess({"backends": [{"url": server.url}], "gateway": {"drain_delay_s": 0},
                         "images": {"pool": "process", "workers": 1}}, tmp_path)
    try:
        gw.start()
        gw.wait_ready()
        url = data_url(photo(5), "image/jpeg")
        body = {"model": "youtu-vl", "max_tokens": 2, "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "what?"}]}]}
        r = httpx.post(gw.url + "/v1/chat/completions", json=body, timeout=60)
        assert r.status_code == 200, r.text
        body["messages"][0]["content"] = body["messages"][0]["content"][1:]
        text_only = httpx.post(gw.url + "/v1/chat/completions", json=body, timeout=60).json()
        # the image's tokens reached llama-server
        assert r.json()["usage"]["prompt_tokens"] > text_only["usage"]["prompt_tokens"] + 10
        assert gw.proc is not None
        workers = children_of(gw.proc.pid)
        assert len(workers) >= 1
    finally:
        gw.stop()
        server.stop()
    def gone(pid: int) -> bool:
        try:
            return ") Z" in Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            return True

    # a loaded machine may take a moment to finish a worker's exit after the gateway's: bounded
    wait_until(lambda: all(gone(pid) for pid in workers), 10, "the image workers to exit")

