"""Two tiers, one normalization: a 12 MP photo through a front gateway and a node gateway, with and without the
tier trust (images.tier_secret, vlgate/images/tier.py).

    python bench/tier_bench.py [--quick] [--markdown PATH]

One real llama-server (tiny model + mmproj). Over it two node gateways, one with the secret and one without;
over each a front gateway configured like its node: "plain" = front -> node, both normalizing; "trusted" =
front -> node, the node passing the front's image on. Beside them the node alone (one tier) for scale. Every
request is a distinct photo (a different corner patch: no cache of ours or llama-server's helps), sent one at
a time, max_tokens 1; rounds interleave the targets in rotating order. Reported: the median per round and the
median over rounds, and the saving per photo (plain - trusted) per round, its median and spread: the spread
is the machine's noise. In process, for the same photos: what the node's second normalization costs (decode,
re-encode) against the trusted path's checks, and what it does to the image (PSNR of the node's output
against the front's, which the trusted node forwards unchanged).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import os
import statistics
import sys
import time
from pathlib import Path

import aiohttp
import httpx
import numpy as np
import yaml
from common import free_port, machine, wait_http
from image_stack import INPUTS, Proc, chat_body, cli, image_files, median, pct, workdir
from PIL import Image

from vlgate.images import ImageSettings
from vlgate.images.decode import available_formats
from vlgate.images.grid import GridRule
from vlgate.images.pipeline import Pipeline
from vlgate.images.tier import TierTrust
from vlgate.launcher.binary import ensure_server
from vlgate.tinymodel.model import write_tiny_model

PHOTO = "12 MP photo (JPEG)"
SECRET = "bench-tier-secret-" + os.urandom(8).hex()
TARGETS = {"plain": "two tiers, each normalizing", "trusted": "two tiers, tier_secret: the node passes it on",
           "node": "one tier (the node alone)"}


class TwoTiers:
    """llama-server <- node gateways (with and without the secret) <- a front gateway over each."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: list[Proc] = []
        self.urls: dict[str, str] = {}  # what the client calls
        self.nodes: dict[str, str] = {}  # the node under each front
        self.pids: dict[str, int] = {}

    def __enter__(self) -> TwoTiers:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def cpu_s(self, name: str) -> float:
        """CPU time (user + system) a gateway process has used so far."""
        fields = Path(f"/proc/{self.pids[name]}/stat").read_text().rsplit(") ", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def _gateway(self, name: str, backend: str, secret: str | None) -> str:
        port = free_port()
        config = {"backends": [{"url": backend}], "images": {"tier_secret": secret} if secret else {},
                  "gateway": {"port": port, "model": "youtu-vl", "drain_delay_s": 0}}
        path = self.root / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        self.procs.append(Proc([sys.executable, "-m", "vlgate.cli", "serve", "--config", str(path),
                                "--log-level", "warning"], self.root / f"{name}.log"))
        self.pids[name] = self.procs[-1].proc.pid
        return f"http://127.0.0.1:{port}"

    def _start(self) -> None:
        model = write_tiny_model(self.root)
        port = free_port()
        self.procs.append(Proc([str(ensure_server()), "-m", str(model.model), "--mmproj", str(model.mmproj),
                                "--host", "127.0.0.1", "--port", str(port), "-np", "2", "-c", "1024", "-t", "2",
                                "--no-warmup"], self.root / "llama-server.log"))
        llama = f"http://127.0.0.1:{port}"
        wait_http(llama + "/health")
        self.nodes = {"plain": self._gateway("node-plain", llama, None),
                      "trusted": self._gateway("node-trusted", llama, SECRET)}
        self.urls = {"plain": self._gateway("front-plain", self.nodes["plain"], None),
                     "trusted": self._gateway("front-trusted", self.nodes["trusted"], SECRET),
                     "node": self._gateway("node-alone", llama, None)}
        for url in (*self.nodes.values(), *self.urls.values()):
            wait_http(url + "/ready")

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        self.procs.clear()


async def one_by_one(session: aiohttp.ClientSession, url: str, bodies: list[bytes]) -> list[float]:
    out = []
    for body in bodies:
        t = time.perf_counter()
        async with session.post(url + "/v1/chat/completions", data=body,
                                headers={"Content-Type": "application/json"}) as r:
            text = await r.text()
        if r.status != 200:
            raise RuntimeError(f"{url}: {r.status} {text[:300]}")
        out.append(time.perf_counter() - t)
    return out


async def end_to_end(urls: dict[str, str], sets: int) -> dict[str, list[float]]:
    """`sets` photos per target, one request at a time, the targets taking turns in rotating order (a set is
    one photo each): latencies in seconds, in set order, so set i of one target pairs with set i of another."""
    files = image_files(PHOTO, len(urls) * (1 + sets))
    bodies = [chat_body(INPUTS[PHOTO][0], f) for f in files]
    out: dict[str, list[float]] = {t: [] for t in urls}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
        for url in urls.values():  # warm-up: connections, the first image's code paths
            await one_by_one(session, url, [bodies.pop()])
        for i in range(sets):
            for target in list(urls)[i % len(urls):] + list(urls)[:i % len(urls)]:
                out[target] += await one_by_one(session, urls[target], [bodies.pop()])
    return out


def normalized(url: str) -> int:
    """Images a gateway normalized (each photo is new to it: a cache miss each)."""
    cache = httpx.get(url + "/status", timeout=5).json()["gateway"]["image_cache"]
    return int(cache["hits"] + cache["misses"])


def in_process(n: int) -> dict[str, float]:
    """The node's second normalization of the front's output vs the trusted path's checks (ms, medians), and
    the PSNR (dB) of the node's re-encoded image against the front's."""
    s = ImageSettings()
    pipeline = Pipeline(s.grid.to_rule(), tuple(available_formats(s.formats)), s.limits, s.encode)
    trust = TierTrust(SECRET, GridRule())
    again, checks, psnr = [], [], []
    for data in image_files(PHOTO, n):
        front = pipeline.run(data)
        payload = front.data_url.split(",", 1)[1]
        raw = base64.b64decode(payload)
        t = time.perf_counter()
        node = pipeline.run(raw)
        again.append(time.perf_counter() - t)
        marks = {front.info.sha256: (front.format, front.info.width, front.info.height,
                                     trust._mac(bytes.fromhex(front.info.sha256), front.format, front.info.width,
                                                front.info.height))}
        t = time.perf_counter()
        passed = trust.vouched(marks, hashlib.sha256(raw).hexdigest(), len(raw), True, payload, front.data_url)
        checks.append(time.perf_counter() - t)
        assert passed is not None and passed.data_url == front.data_url
        a = np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"), np.float64)
        b = np.asarray(Image.open(io.BytesIO(base64.b64decode(node.data_url.split(",", 1)[1]))).convert("RGB"),
                       np.float64)
        psnr.append(10 * np.log10(255 ** 2 / float(np.mean((a - b) ** 2))))
    return {"again_ms": statistics.median(again) * 1e3, "checks_ms": statistics.median(checks) * 1e3,
            "psnr_db": statistics.median(psnr), "n": n}


def run(quick: bool) -> tuple[list[str], str]:
    sets, blocks = (12, 3) if quick else (40, 5)
    local = in_process(5 if quick else 9)
    with TwoTiers(workdir()) as stack:
        cpu = {name: -stack.cpu_s(name) for name in stack.pids}
        lat = asyncio.run(end_to_end(stack.urls, sets))
        cpu = {name: (used + stack.cpu_s(name)) / (sets + 1) for name, used in cpu.items()}  # per photo
        nodes = {name: normalized(url) for name, url in stack.nodes.items()}
    assert nodes["trusted"] == 0 and nodes["plain"] == sets + 1, nodes  # the trusted node normalized nothing
    saved = [p - t for p, t in zip(lat["plain"], lat["trusted"], strict=True)]  # photo i of each, back to back
    size = len(saved) // blocks
    by_block = [median(saved[b * size:(b + 1) * size]) for b in range(blocks)]
    q1, _, q3 = statistics.quantiles(saved, n=4)
    rows = [f"| {TARGETS[t]} | {median(v) * 1000:.0f} | {pct(v, 10) * 1000:.0f} / {pct(v, 90) * 1000:.0f} |"
            for t, v in lat.items()]
    rows.append(f"| **saved per photo** (plain - trusted, {sets} back-to-back pairs) | **{median(saved) * 1000:.1f}** "
                f"| {q1 * 1000:.1f} / {q3 * 1000:.1f} (quartiles) |")
    meta = (f"{sets} photos per target, one request at a time, the three targets taking turns; the saving is the "
            f"median over pairs of the plain and the trusted request sent back to back (medians of {blocks} blocks "
            f"of pairs: {' / '.join(f'{x * 1000:.1f}' for x in by_block)} ms). The node without the secret "
            f"normalized {nodes['plain']} photos, the node with it {nodes['trusted']}. CPU time per photo "
            f"(all threads): node {cpu['node-plain'] * 1000:.1f} ms without the secret, "
            f"{cpu['node-trusted'] * 1000:.1f} ms with it; front {cpu['front-plain'] * 1000:.1f} / "
            f"{cpu['front-trusted'] * 1000:.1f} ms; the node alone (one tier) {cpu['node-alone'] * 1000:.1f} ms. "
            f"In process over "
            f"{local['n']} photos: the node's second normalization {local['again_ms']:.1f} ms, the trusted "
            f"path's checks {local['checks_ms'] * 1000:.0f} us (first call on a fresh payload); PSNR of the node's "
            f"re-encoded image against the front's {local['psnr_db']:.1f} dB (the trusted node forwards the "
            f"front's bytes: identical)")
    return rows, meta


def markdown(rows: list[str], meta: str, quick: bool) -> str:
    return "\n".join([
        "## Two tiers: one normalization per 12 MP photo" + (" (quick)" if quick else ""), "",
        f"Machine: {machine()}. {meta}.", "",
        "| path (12 MP JPEG, max_tokens 1) | median (ms) | p10 / p90 (ms) |", "|---|---:|---|", *rows, ""])


if __name__ == "__main__":
    cli(__doc__, run, markdown)
