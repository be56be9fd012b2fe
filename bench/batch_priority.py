"""Batch jobs are polite: interactive time to first token with and without a large batch running on the same
backends, and batch throughput against the same requests sent live.

    python bench/batch_priority.py                         # fake backends (the scheduling alone), ~2 min
    python bench/batch_priority.py --backend llama         # tiny-model llama-servers (compute shared too)
    python bench/batch_priority.py --shares 0.5,1.0 --rounds 6 --seconds 10 --rate 12 --markdown PATH

One `vlgate serve` (SQLite store in a temp dir) in front of the backends. Interactive load is open-loop:
streaming chats arriving as a Poisson process (`--rate` per second, seeded), TTFT measured by the client
to the first SSE chunk. Per `storage.batches.share`: rounds of interactive alone (baseline) then the same
arrivals while a batch far larger than the run is working (paired, so the machine's drift hits both), and
then throughput: `--lines` batch lines alone (create to completed) against the same requests sent live at
a concurrency of every slot.

Backends: `fake` (tests/support/fakebackend.py: 2 servers x 4 slots; every request waits 50 ms "prefill";
a stream then sends 8 chunks 10 ms apart, a non-stream (batch) answer takes 400 ms more): what the balancer
and the worker's politeness do, with no compute contention. `llama`: 2 tiny-model llama-servers x 2 slots
(b11434, 1 thread each; interactive max_tokens 16, batch lines 64): on a 2-core machine the backends and the
gateway share the cores, so batch decoding also slows interactive decoding; a GPU fleet shares less.
The goal (issue 21): interactive p99 TTFT with the batch within 10% of without. Every process is stopped
by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from common import emit, free_port, machine, wait_http

BATCH_DONE = ("completed", "failed", "expired", "cancelled")


class Fleet:
    """The backends (fake or tiny llama-servers) and one gateway in front, restartable with another share."""

    def __init__(self, kind: str, tmp: Path) -> None:
        self.kind, self.tmp = kind, tmp
        self.stoppers: list[Callable[[], None]] = []
        self.urls: list[str] = []
        self.gateway: subprocess.Popen[bytes] | None = None
        self.url = ""
        if kind == "fake":
            from support.fakebackend import FakeBackend

            for _ in range(2):
                fb = FakeBackend(slots=4, delay_s=0.05, script=lambda req: (0.4, "a batch answer")).start()
                self.urls.append(fb.url)
                self.stoppers.append(fb.stop)
        else:
            from support.llama import LlamaServer
            from vlgate.launcher.binary import ensure_server
            from vlgate.tinymodel.model import write_tiny_model

            model = write_tiny_model(tmp / "model")
            for i in range(2):
                server = LlamaServer(ensure_server(), model.model, slots=2, ctx=1024, threads=1,
                                     extra_args=["--jinja"], log_dir=tmp / f"llama-{i}").start()
                self.urls.append(server.url)
                self.stoppers.append(server.stop)

    @property
    def slots(self) -> int:
        return 8 if self.kind == "fake" else 4

    def start_gateway(self, share: float) -> None:
        self.stop_gateway()
        port = free_port()
        config = {"backends": [{"url": u} for u in self.urls],
                  "gateway": {"port": port, "model": "youtu-vl", "drain_delay_s": 0},
                  "storage": {"data_dir": str(self.tmp / f"data-{share}"), "batches": {"share": share}}}
        path = self.tmp / f"gateway-{share}.yaml"
        path.write_text(yaml.safe_dump(config))
        with open(self.tmp / f"gateway-{share}.log", "wb") as log:
            self.gateway = subprocess.Popen([sys.executable, "-m", "vlgate.cli", "serve", "--config", str(path)],
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.url = f"http://127.0.0.1:{port}"
        wait_http(self.url + "/ready")

    def stop_gateway(self) -> None:
        if self.gateway is not None and self.gateway.poll() is None:
            os.kill(self.gateway.pid, signal.SIGTERM)
            try:
                self.gateway.wait(20)
            except subprocess.TimeoutExpired:
                os.kill(self.gateway.pid, signal.SIGKILL)
                self.gateway.wait()
        self.gateway = None

    def close(self) -> None:
        self.stop_gateway()
        for stop in self.stoppers:
            stop()


def interactive_body(kind: str, i: int) -> dict[str, Any]:
    return {"model": "youtu-vl", "stream": True, "max_tokens": 16,
            "messages": [{"role": "user", "content": f"interactive question {i}"}]}


def batch_body(kind: str, i: int) -> dict[str, Any]:
    return {"model": "youtu-vl", "max_tokens": 64, "messages": [{"role": "user", "content": f"catalogue item {i}"}]}


async def ttft(client: httpx.AsyncClient, body: dict[str, Any]) -> float | None:
    started = time.perf_counter()
    async with client.stream("POST", "/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            await r.aread()
            return None
        first = None
        async for _ in r.aiter_raw():  # read it all: the slot is held until the answer ends
            if first is None:
                first = time.perf_counter() - started
        return first


async def interactive(url: str, kind: str, rate: float, seconds: float, seed: int) -> tuple[list[float], int]:
    """Open-loop Poisson arrivals for `seconds`: each request's TTFT, and how many failed."""
    rng = random.Random(seed)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=httpx.Limits(max_connections=512)) as client:
        tasks = []
        start = time.perf_counter()
        at, i = 0.0, 0
        while at < seconds:
            await asyncio.sleep(max(0.0, start + at - time.perf_counter()))
            tasks.append(asyncio.ensure_future(ttft(client, interactive_body(kind, i))))
            at += rng.expovariate(rate)
            i += 1
        results = await asyncio.gather(*tasks, return_exceptions=True)
    good = [r for r in results if isinstance(r, float)]
    return good, len(results) - len(good)


def upload_batch(url: str, kind: str, n: int) -> str:
    lines = "".join(json.dumps({"custom_id": f"item-{i}", "method": "POST", "url": "/v1/chat/completions",
                                "body": batch_body(kind, i)}) + "\n" for i in range(n))
    with httpx.Client(base_url=url, timeout=120) as c:
        f = c.post("/v1/files", files={"file": ("b.jsonl", lines.encode())}, data={"purpose": "batch"}).json()
        b = c.post("/v1/batches", json={"input_file_id": f["id"], "endpoint": "/v1/chat/completions",
                                        "completion_window": "24h"}).json()
    return str(b["id"])


def batch_state(url: str, batch_id: str) -> dict[str, Any]:
    r = httpx.get(f"{url}/v1/batches/{batch_id}", timeout=30)
    if r.status_code != 200:
        raise SystemExit(f"GET /v1/batches/{batch_id}: {r.status_code} {r.text[:500]}")
    return dict(r.json())


def p(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) >= 2 else (values[0] if values else float("nan"))


async def live(url: str, kind: str, n: int, concurrency: int) -> float:
    """The batch's requests sent live, `concurrency` at once: requests per second."""
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=httpx.Limits(max_connections=64)) as client:
        async def one(i: int) -> None:
            async with gate:
                r = await client.post("/v1/chat/completions", json=batch_body(kind, i))
                r.raise_for_status()

        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        return n / (time.perf_counter() - started)


def batch_alone(url: str, kind: str, n: int) -> float:
    """`n` lines as a batch, nothing else running: lines per second, create to completed."""
    started = time.perf_counter()
    batch_id = upload_batch(url, kind, n)
    while (state := batch_state(url, batch_id))["status"] not in BATCH_DONE:
        time.sleep(0.1)
    assert state["status"] == "completed" and state["request_counts"]["completed"] == n, state
    return n / (time.perf_counter() - started)


def run_share(fleet: Fleet, share: float, args: argparse.Namespace) -> dict[str, Any]:
    """Rounds of (interactive alone, the same arrivals beside a running batch): paired, so the machine's
    drift hits both alike; then throughput."""
    fleet.start_gateway(share)
    alone: list[float] = []
    beside: list[float] = []
    changes: list[float] = []  # each round's p99 change: a hiccup of the machine hits one round, not the median
    failed, ran, preempted = 0, 0, 0.0
    for round_ in range(args.rounds):
        seed = args.seed + round_
        times, bad = asyncio.run(interactive(fleet.url, fleet.kind, args.rate, args.seconds, seed))
        alone += times
        round_alone = p(times, 99)
        big = upload_batch(fleet.url, fleet.kind, args.big_lines)
        time.sleep(2)  # the batch fills the slots it may take
        before = batch_state(fleet.url, big)["request_counts"]
        preempted -= metric(fleet.url, "vlgate_batch_line_preemptions_total")
        times, bad2 = asyncio.run(interactive(fleet.url, fleet.kind, args.rate, args.seconds, seed))
        beside += times
        changes.append(p(times, 99) / round_alone - 1)
        preempted += metric(fleet.url, "vlgate_batch_line_preemptions_total")
        after = batch_state(fleet.url, big)
        assert after["status"] == "in_progress", "the batch ran out during the measurement: raise --big-lines"
        ran += done(after["request_counts"]) - done(before)
        failed += bad + bad2
        httpx.post(f"{fleet.url}/v1/batches/{big}/cancel", timeout=30)
        time.sleep(1)
    batch_rate = batch_alone(fleet.url, fleet.kind, args.lines)
    live_rate = asyncio.run(live(fleet.url, fleet.kind, args.lines, fleet.slots))
    fleet.stop_gateway()
    seconds = args.seconds * args.rounds
    return {"share": share, "alone": alone, "beside": beside, "failed": failed, "batch_lines_during": ran / seconds,
            "median_change": statistics.median(changes),
            "preempted": preempted / seconds, "batch_rate": batch_rate, "live_rate": live_rate}


def done(counts: dict[str, int]) -> int:
    return counts["completed"] + counts["failed"]


def metric(url: str, name: str) -> float:
    rows = [r for r in httpx.get(url + "/metrics", timeout=30).text.splitlines() if r.startswith(name + " ")]
    return float(rows[0].split()[1]) if rows else 0.0


def report(fleet: Fleet, rows: list[dict[str, Any]], args: argparse.Namespace) -> list[str]:
    out = [f"## Batch priority ({args.backend} backends, {fleet.slots} slots)", "",
           f"Measured {time.strftime('%Y-%m-%d %H:%M')} on {machine()}; interactive: Poisson {args.rate}/s streaming "
           f"chats, {args.rounds} rounds of {args.seconds:g} s alone then the same arrivals beside a running "
           f"{args.big_lines}-line batch (seeds {args.seed}..); "
           f"throughput: {args.lines} lines as a batch vs live at concurrency {fleet.slots}.", "",
           "| share | TTFT p50 alone | p50 with batch | p99 alone | p99 with batch | p99 change (pooled; median of "
           "rounds) | batch lines/s meanwhile | preempted/s | batch alone lines/s | live req/s | batch/live |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        p99a, p99b = p(r["alone"], 99), p(r["beside"], 99)
        out.append(f"| {r['share']:g} | {p(r['alone'], 50) * 1000:.1f} ms | {p(r['beside'], 50) * 1000:.1f} ms | "
                   f"{p99a * 1000:.1f} ms | {p99b * 1000:.1f} ms | {(p99b / p99a - 1) * 100:+.1f}%; "
                   f"{r['median_change'] * 100:+.1f}% | "
                   f"{r['batch_lines_during']:.2f} | {r['preempted']:.2f} | {r['batch_rate']:.2f} | "
                   f"{r['live_rate']:.2f} | "
                   f"{r['batch_rate'] / r['live_rate'] * 100:.0f}% |")
        if r["failed"]:
            out.append(f"\n(share {r['share']:g}: {r['failed']} interactive requests failed)")
    out += ["", "Goal: p99 with the batch within +10% of alone (issue 21). `batch/live`: a batch takes at most "
            "`share` of the slots, so at share s expect about s of the live rate when nothing else runs."]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["fake", "llama"], default="fake")
    parser.add_argument("--shares", default="0.5", help="storage.batches.share values, comma separated")
    parser.add_argument("--seconds", type=float, default=10.0, help="each interactive run")
    parser.add_argument("--rounds", type=int, default=6, help="pairs of runs (alone, beside a batch) per share")
    parser.add_argument("--rate", type=float, default=None, help="interactive arrivals per second "
                        "(default: 12 fake, 4 llama)")
    parser.add_argument("--lines", type=int, default=None, help="throughput batch (default 200 fake, 400 llama)")
    parser.add_argument("--big-lines", type=int, default=5000, help="the batch running beside interactive load")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--markdown", help="also write the result here")
    args = parser.parse_args()
    args.rate = args.rate or (12.0 if args.backend == "fake" else 4.0)
    args.lines = args.lines or (200 if args.backend == "fake" else 400)
    with tempfile.TemporaryDirectory(prefix="vlgate-batch-bench-") as tmp:
        fleet = Fleet(args.backend, Path(tmp))
        try:
            rows = [run_share(fleet, float(s), args) for s in args.shares.split(",")]
        except (SystemExit, AssertionError):
            for log in sorted(Path(tmp).glob("gateway-*.log")):  # what the gateway said, before the dir goes
                print(f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-40:]))
            raise
        finally:
            fleet.close()
    emit(report(fleet, rows, args), args.markdown)


if __name__ == "__main__":
    main()
