"""What the image benches share: a real llama-server (tiny model + mmproj) with `vlgate serve` gateways in
front, each pinned to its own CPUs, distinct image bodies, and a concurrent request runner.

Every process is started in its own session and stopped by PID (SIGTERM, then SIGKILL of its group).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import aiohttp
import numpy as np
import yaml
from common import emit, free_port, wait_http
from images_bench import photo, screenshot
from PIL import Image, ImageDraw

from vlgate.launcher.binary import ensure_server
from vlgate.tinymodel.model import write_tiny_model

ROOT = Path(__file__).resolve().parent.parent


def cpu_plan() -> dict[str, list[int] | None]:
    """Where each process runs. With 4+ CPUs everything is apart: gateway on the first one or two, the client on
    the last, llama-server on the rest. With fewer there is nothing to keep apart: only the gateway is pinned."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) >= 4:
        return {"gw1": cpus[:1], "gw2": cpus[:2], "llama": cpus[2:-1], "client": cpus[-1:]}
    return {"gw1": cpus[-1:], "gw2": cpus[:2], "llama": None, "client": None}


def describe(cpus: list[int] | None) -> str:
    return "unpinned" if cpus is None else "CPU " + ",".join(map(str, cpus))


def placement(plan: dict[str, list[int] | None]) -> str:
    """The "where it ran" line of a result."""
    return (f"llama-server {describe(plan['llama'])}, client {describe(plan['client'])}, "
            f"gateways {describe(plan['gw1'])} / {describe(plan['gw2'])}")


class Proc:
    """A subprocess in its own session, optionally pinned with taskset, stopped by PID."""

    def __init__(self, args: list[str], log: Path, cpus: list[int] | None = None) -> None:
        prefix = ["taskset", "-c", ",".join(map(str, cpus))] if cpus else []
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(prefix + args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


@dataclass(frozen=True)
class GatewaySpec:
    workers: int  # images.workers: decode threads
    cpus: list[int] | None
    prelude: str = ""  # Python run before the gateway starts (an A/B variant of the code), or none
    pool: str = "thread"  # images.pool: threads (the default) or worker processes


@dataclass
class Stack:
    """One llama-server and named gateways in front of it: {"direct": url, name: url, ...}."""

    workdir: Path
    slots: int
    gateways: dict[str, GatewaySpec]
    llama_cpus: list[int] | None = None
    urls: dict[str, str] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)
    procs: list[Proc] = field(default_factory=list)

    def __enter__(self) -> Self:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.stop()
        if exc_type is None:  # on a failure the logs stay for a look
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _start(self) -> None:
        model = write_tiny_model(self.workdir)
        port = free_port()
        threads = len(self.llama_cpus) if self.llama_cpus else 2
        self.procs.append(Proc([str(ensure_server()), "-m", str(model.model), "--mmproj", str(model.mmproj),
                                "--host", "127.0.0.1", "--port", str(port), "-np", str(self.slots),
                                "-c", str(256 * self.slots), "-t", str(threads), "--no-warmup"],
                               self.workdir / "llama-server.log", self.llama_cpus))
        self.urls["direct"] = f"http://127.0.0.1:{port}"
        wait_http(self.urls["direct"] + "/health")
        for name, spec in self.gateways.items():
            gport = free_port()
            config = {"backends": [{"url": self.urls["direct"]}],
                      "images": {"workers": spec.workers, "pool": spec.pool},
                      "gateway": {"port": gport, "model": "youtu-vl", "drain_delay_s": 0}}
            path = self.workdir / f"{name}.yaml"
            path.write_text(yaml.safe_dump(config))
            start = ["-c", spec.prelude + "\nimport runpy; runpy.run_module('vlgate.cli', run_name='__main__')"] \
                if spec.prelude else ["-m", "vlgate.cli"]
            self.procs.append(Proc([sys.executable, *start, "serve", "--config", str(path), "--log-level", "warning"],
                                   self.workdir / f"{name}.log", spec.cpus))
            self.pids[name] = self.procs[-1].proc.pid  # taskset execs the command: same PID
            self.urls[name] = f"http://127.0.0.1:{gport}"
        for name in self.gateways:
            wait_http(self.urls[name] + "/ready")

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        self.procs.clear()


def workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="vlgate-image-bench-"))


# ---------------------------------------------------------------- inputs: distinct images, prebuilt bodies

def _variants(img: Image.Image, n: int, fmt: str, **kw: Any) -> list[bytes]:
    """n encodings of `img`, each with a different 24x24 corner patch: no cache (ours or llama-server's) helps."""
    out = []
    for i in range(n):
        im = img.copy()
        ImageDraw.Draw(im).rectangle((0, 0, 23, 23), fill=(i * 37 % 256, i * 11 % 256, i // 256 % 256))
        buf = io.BytesIO()
        im.save(buf, fmt, **kw)
        out.append(buf.getvalue())
    return out


INPUTS = {  # name -> (mime, source image, encoder args); sizes as in images_bench.py
    "12 MP photo (JPEG)": ("image/jpeg", lambda: photo(4032, 3024, 1), {"format": "JPEG", "quality": 92}),
    "4K screenshot (PNG)": ("image/png", lambda: screenshot(3840, 2160, 2), {"format": "PNG"}),
    "1 MP photo (WebP)": ("image/webp", lambda: photo(1280, 800, 3), {"format": "WEBP", "quality": 80}),
}


def image_files(name: str, n: int) -> list[bytes]:
    _, source, kw = INPUTS[name]
    kw = dict(kw)
    return _variants(source(), n, kw.pop("format"), **kw)


def chat_body(mime: str, data: bytes, max_tokens: int = 1) -> bytes:
    import orjson

    url = f"data:{mime};base64," + base64.b64encode(data).decode()
    return orjson.dumps({"model": "youtu-vl", "max_tokens": max_tokens, "temperature": 0, "messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                     {"type": "text", "text": "What is in the picture?"}]}]})


TEXT_BODY = b'{"model":"youtu-vl","max_tokens":1,"messages":[{"role":"user","content":"hi"}]}'


# ---------------------------------------------------------------- running requests

@dataclass
class Result:
    latencies: list[float]  # seconds, successful requests
    wall: float
    errors: list[str]

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.wall if self.wall else 0.0


async def post(session: aiohttp.ClientSession, url: str, body: bytes) -> tuple[float, int, str]:
    t = time.perf_counter()
    async with session.post(url + "/v1/chat/completions", data=body,
                            headers={"Content-Type": "application/json"}) as r:
        text = await r.text()
    return time.perf_counter() - t, r.status, text


async def run_batch(url: str, bodies: list[bytes], concurrency: int) -> Result:
    """Send every body once, `concurrency` at a time; latency = the whole non-stream answer."""
    queue = list(reversed(bodies))
    result = Result([], 0.0, [])
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:
        async def worker() -> None:
            while queue:
                latency, status, text = await post(session, url, queue.pop())
                if status == 200:
                    result.latencies.append(latency)
                else:
                    result.errors.append(f"{status} {text[:200]}")

        t = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        result.wall = time.perf_counter() - t
    return result


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(np.ceil(q / 100 * len(ordered))) - 1))]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def ms(values: list[float], digits: int = 0, with_max: bool = False) -> str:
    """"p50 / p99[ / max]" of latencies in seconds, as milliseconds."""
    shown = [median(values), pct(values, 99)] + ([max(values)] if with_max else [])
    return " / ".join(f"{v * 1000:.{digits}f}" for v in shown)


def cli(doc: str | None, run: Callable[..., tuple[list[str], str]],
        markdown: Callable[[list[str], str, bool], str], *, inputs: bool = False) -> None:
    """The benches' command line: `--quick`, `--markdown PATH` (what bench/report.py calls); with `inputs`, also
    `--inputs SUBSTR,...` (only the INPUTS whose name contains one of them, e.g. `--inputs screenshot`)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer requests: the whole run well under 3 minutes")
    ap.add_argument("--markdown", help="write the markdown section to this file")
    if inputs:
        ap.add_argument("--inputs", default="", help="comma-separated name parts: only those inputs (default all)")
    args = ap.parse_args()
    if inputs:
        wanted = [w.strip().lower() for w in args.inputs.split(",") if w.strip()]
        names = [n for n in INPUTS if not wanted or any(w in n.lower() for w in wanted)]
        rows, where = run(args.quick, names)
    else:
        rows, where = run(args.quick)
    emit(markdown(rows, where, args.quick).splitlines(), args.markdown)
