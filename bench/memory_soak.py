"""Gateway memory: RSS through a soak, per idle connection, per in-flight stream.

    python bench/memory_soak.py --soak-s 60 --idle 1000 --streams 200

Runs `vlgate serve` (one core is enough) in front of the shared bench's fake llama-server
(../shared/bench/fake_upstream.py), all on loopback; every process started is stopped by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml
from common import free_port, rss_mb, wait_http

FAKE = Path(__file__).resolve().parents[1].parent / "shared" / "bench" / "fake_upstream.py"


async def soak(url: str, seconds: float, pid: int) -> list[tuple[float, float]]:
    samples: list[tuple[float, float]] = []
    body = {"model": "fake", "max_tokens": 8, "messages": [{"role": "user", "content": "soak"}]}
    until = time.monotonic() + seconds
    started = time.monotonic()
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=32)) as client:
        async def worker(i: int) -> None:
            n = 0
            while time.monotonic() < until:
                n += 1
                stream = (n + i) % 2 == 0
                async with client.stream("POST", url + "/v1/chat/completions", json={**body, "stream": stream}) as r:
                    await r.aread()

        async def sampler() -> None:
            while time.monotonic() < until:
                samples.append((time.monotonic() - started, rss_mb(pid)))
                await asyncio.sleep(max(1.0, seconds / 20))

        await asyncio.gather(sampler(), *(worker(i) for i in range(16)))
    samples.append((time.monotonic() - started, rss_mb(pid)))
    return samples


def idle_connections(port: int, n: int, pid: int) -> float:
    before = rss_mb(pid)
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")  # a served, kept-alive connection
        socks.append(s)
    for s in socks:
        s.recv(4096)
    time.sleep(1)
    after = rss_mb(pid)
    for s in socks:
        s.close()
    return (after - before) * 1024 / n


async def streams_in_flight(url: str, fake: str, n: int, pid: int) -> float:
    httpx.post(fake + "/_fake/config", json={"token_delay_ms": 200})
    body = {"model": "fake", "max_tokens": 64, "stream": True, "messages": [{"role": "user", "content": "s"}]}
    before = rss_mb(pid)
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=n + 8)) as client:
        opened = asyncio.Event()
        count = 0
        peak = 0.0

        async def one() -> None:
            nonlocal count
            async with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
                async for _ in r.aiter_raw():
                    count += 1
                    if count >= n:
                        opened.set()
                    await asyncio.sleep(0)

        tasks = [asyncio.create_task(one()) for _ in range(n)]
        await asyncio.wait_for(opened.wait(), 30)
        await asyncio.sleep(1)
        peak = rss_mb(pid)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    httpx.post(fake + "/_fake/config", json={"token_delay_ms": 0})
    return (peak - before) * 1024 / n


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--soak-s", type=float, default=60)
    ap.add_argument("--idle", type=int, default=1000)
    ap.add_argument("--streams", type=int, default=200)
    args = ap.parse_args()
    up_port, gw_port = free_port(), free_port()
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            procs.append(subprocess.Popen([sys.executable, str(FAKE), "--port", str(up_port), "--slots", "1024"],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                          start_new_session=True))
            fake = f"http://127.0.0.1:{up_port}"
            wait_http(fake + "/health")
            cfg = Path(tmp) / "gw.yaml"
            cfg.write_text(yaml.safe_dump({"gateway": {"port": gw_port, "model": "fake", "drain_delay_s": 0,
                                                       "limits": {"max_connections": 100_000}},
                                           "backends": [{"url": fake, "slots": 1024}]}))
            gw = subprocess.Popen(["taskset", "-c", "0", sys.executable, "-m", "vlgate.cli", "serve", "--config",
                                   str(cfg), "--log-level", "warning"], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, start_new_session=True)
            procs.append(gw)
            url = f"http://127.0.0.1:{gw_port}"
            wait_http(url + "/health")
            print(f"idle gateway: {rss_mb(gw.pid):.1f} MB")
            samples = asyncio.run(soak(url, args.soak_s, gw.pid))
            warm = next((m for t, m in samples if t >= args.soak_s / 4), samples[0][1])
            print(f"soak {args.soak_s:g}s, 16 clients: RSS start {samples[0][1]:.1f} MB, after warm-up "
                  f"{warm:.1f} MB, end {samples[-1][1]:.1f} MB")
            print(f"per idle keep-alive connection: {idle_connections(gw_port, args.idle, gw.pid):.1f} KB "
                  f"({args.idle} connections)")
            per_stream = asyncio.run(streams_in_flight(url, fake, args.streams, gw.pid))
            print(f"per in-flight stream: {per_stream:.1f} KB ({args.streams} streams)")
        finally:
            for p in procs:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
    return 0


if __name__ == "__main__":
    sys.exit(main())
