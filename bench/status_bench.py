"""What the fleet view costs: the per-backend scrape, one /status answer, and gateway throughput with pages open.

    python bench/status_bench.py [--seconds 20] [--concurrency 4] [--pages 10]

Two tiny-model llama-servers (2 slots, 1 thread each) behind `vlgate serve` on this machine. Phases of
`--seconds` each, same load (non-stream chat, 4 tokens, `--concurrency` clients): the status page closed,
one real headless Chromium with the page open (needs chromium + chromedriver), and `--pages` simulated pages
(each polls /status every 2 s, as the page does). Scrape: the gateway's own `FleetScraper.scrape` (GET
/metrics + /slots concurrently, parse), called in a loop against one live backend.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml
from common import free_port, wait_http

from vlgate.backends import Backend, BackendState
from vlgate.gateway.observe.fleetmetrics import FleetScraper, _parse
from vlgate.gateway.observe.timeline import Timelines
from vlgate.launcher.binary import ensure_server
from vlgate.tinymodel.model import write_tiny_model

KEY = "sk-bench"


def start(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(cmd, stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)


def ms(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def scrape_cost(url: str, n: int) -> str:
    backend = Backend(url=url, name="b0", state=BackendState.READY)
    async with httpx.AsyncClient(timeout=5) as client:
        scraper = FleetScraper(client, Timelines())
        times = []
        cpu = time.process_time()
        for _ in range(n):
            await scraper.scrape(backend)
            times.append(scraper.last["b0"].seconds)
        cpu = (time.process_time() - cpu) / n
        text = (await client.get(url + "/metrics")).text
    started = time.perf_counter()
    for _ in range(n):
        _parse(text)
    parse = (time.perf_counter() - started) / n
    return (f"scrape per backend (GET /metrics + /slots, parse), {n} rounds: "
            f"wall mean {statistics.mean(times) * 1000:.2f} ms, "
            f"p50 {ms(times, 0.5):.2f} ms, p99 {ms(times, 0.99):.2f} ms; gateway CPU {cpu * 1000:.2f} ms per scrape, "
            f"of which parsing {parse * 1000:.3f} ms ({len(text)} bytes of llama-server text)")


async def load(url: str, seconds: float, concurrency: int) -> tuple[int, list[float]]:
    done: list[float] = []
    stop = time.monotonic() + seconds
    body = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}
    async with httpx.AsyncClient(timeout=30, headers={"Authorization": f"Bearer {KEY}"}) as client:
        async def worker() -> None:
            while time.monotonic() < stop:
                t = time.perf_counter()
                r = await client.post(url + "/v1/chat/completions", json=body)
                assert r.status_code == 200, r.text
                done.append(time.perf_counter() - t)
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(done), done


async def fake_pages(url: str, n: int, stop: asyncio.Event) -> int:
    polls = 0
    async with httpx.AsyncClient(timeout=10, headers={"Authorization": f"Bearer {KEY}"}) as client:
        async def page(offset: float) -> None:
            nonlocal polls
            await asyncio.sleep(offset)
            while not stop.is_set():
                assert (await client.get(url + "/status")).status_code == 200
                polls += 1
                await asyncio.sleep(2.0)
        await asyncio.gather(*(page(2.0 * i / n) for i in range(n)))
    return polls


async def phase(name: str, url: str, args: argparse.Namespace, pages: int = 0) -> str:
    stop = asyncio.Event()
    poller = asyncio.ensure_future(fake_pages(url, pages, stop)) if pages else None
    count, times = await load(url, args.seconds, args.concurrency)
    stop.set()
    polls = await poller if poller else 0
    extra = f", {polls} /status polls" if pages else ""
    return (f"{name:<28} {count / args.seconds:8.1f} req/s  p50 {ms(times, 0.5):6.1f} ms  "
            f"p99 {ms(times, 0.99):6.1f} ms{extra}")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def status_cost(url: str, pid: int, n: int = 300) -> str:
    with httpx.Client(headers={"Authorization": f"Bearer {KEY}"}) as client:
        size = len(client.get(url + "/status").content)
        cpu = cpu_seconds(pid)
        started = time.perf_counter()
        for _ in range(n):
            client.get(url + "/status")
        took = (time.perf_counter() - started) / n
        cpu = (cpu_seconds(pid) - cpu) / n
    return (f"GET /status: {took * 1000:.2f} ms round trip, gateway CPU {cpu * 1000:.2f} ms per answer "
            f"(2 backends, {size} bytes); one open page polls every 2 s: {cpu / 2 * 100:.2f} % of one core")


def browser(url: str):  # selenium is a test extra: imported here
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    driver.get(url + "/")
    driver.execute_script(f"sessionStorage.setItem('vlgate.apiKey', '{KEY}'); location.reload();")
    return driver


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--pages", type=int, default=10)
    ap.add_argument("--scrapes", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vlgate-status-bench-"))
    binary, model = ensure_server(), write_tiny_model(work).model
    procs = []
    try:
        urls = []
        for i in range(2):
            port = free_port()
            procs.append(start([str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(port), "-c", "512",
                                "-np", "2", "-t", "1", "--metrics"], work / f"llama-{i}.log"))
            urls.append(f"http://127.0.0.1:{port}")
        for u in urls:
            wait_http(u + "/health")
        port = free_port()
        cfg = work / "gateway.yaml"
        cfg.write_text(yaml.safe_dump({"gateway": {"port": port, "api_keys": [{"name": "bench", "key": KEY}]},
                                       "backends": [{"url": u} for u in urls]}))
        procs.append(start([sys.executable, "-m", "vlgate.cli", "serve", "--config", str(cfg), "--log-level",
                            "warning"], work / "gateway.log"))
        gw = f"http://127.0.0.1:{port}"
        wait_http(gw + "/health")
        print(f"# {time.strftime('%Y-%m-%d %H:%M')} on {os.cpu_count()} cores, {args.seconds:g} s per phase, "
              f"concurrency {args.concurrency}")
        print(asyncio.run(scrape_cost(urls[0], args.scrapes)))
        print(status_cost(gw, procs[-1].pid))
        for _ in range(args.rounds):  # interleaved: a noisy machine drifts between phases
            print(asyncio.run(phase("page closed", gw, args)))
            if shutil.which("chromedriver"):
                driver = browser(gw)
                try:
                    print(asyncio.run(phase("1 page open (chromium)", gw, args)))
                finally:
                    driver.quit()
            print(asyncio.run(phase(f"{args.pages} pages open (simulated)", gw, args, pages=args.pages)))
    finally:
        for p in procs:
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(10)


if __name__ == "__main__":
    main()
