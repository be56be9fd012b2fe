"""Is text traffic blocked behind images? The gateway's event-loop stall, measured from outside.

    python bench/loop_stall.py [--quick] [--markdown PATH]

A real llama-server (tiny model + mmproj, 24 slots, so no request waits for a slot) behind `vlgate serve`
(1 decode worker on 1 CPU, and 2 workers on 2 CPUs). Two probes, each a separate process with one keep-alive
connection: GET /health every 5 ms (answered on the loop itself: its latency is the loop's stall), a text
chat (max_tokens 1, through the whole proxy path to llama-server) every 20 ms, and the same text chat sent to
llama-server directly (the control: what llama-server itself adds while it works on the images). Each probe runs
alone, then while 16 clients keep 12 MP JPEG requests in flight (each a distinct file: a fresh JPEG comment segment).
"""

from __future__ import annotations

import asyncio
import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
from common import children, machine
from image_stack import (
    TEXT_BODY,
    GatewaySpec,
    Stack,
    chat_body,
    cli,
    cpu_plan,
    image_files,
    median,
    ms,
    placement,
    post,
    workdir,
)

PROBE = r"""
import http.client, json, sys, time
port, path, body = int(sys.argv[1]), sys.argv[2], sys.argv[3].encode()
seconds, gap = float(sys.argv[4]), float(sys.argv[5])
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
out, end = [], time.monotonic() + seconds
while time.monotonic() < end:
    t = time.perf_counter()
    if body:
        conn.request("POST", path, body, {"Content-Type": "application/json"})
    else:
        conn.request("GET", path)
    r = conn.getresponse(); r.read()
    if r.status == 200:
        out.append(time.perf_counter() - t)
    time.sleep(gap)
print(json.dumps(out))
"""

PROBES = {  # name -> (path, body, pause between requests, sent to llama-server itself)
    "GET /health": ("/health", "", 0.005, False),
    "text chat": ("/v1/chat/completions", TEXT_BODY.decode(), 0.02, False),
    "text chat, direct (control)": ("/v1/chat/completions", TEXT_BODY.decode(), 0.02, True),
}
IN_FLIGHT = 16


def with_comment(jpeg: bytes, n: int) -> bytes:
    """The same pixels with a different COM segment: a new file for every cache, no re-encoding."""
    text = f"vlgate bench {n}".encode()
    return jpeg[:2] + b"\xff\xfe" + struct.pack(">H", len(text) + 2) + text + jpeg[2:]


async def image_load(url: str, jpeg: bytes, stop: asyncio.Event, sent: list[int]) -> None:
    """IN_FLIGHT clients, each sending its next distinct photo as soon as the previous one is answered."""

    async def client(i: int) -> None:
        n = 0
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
            while not stop.is_set():
                n += 1
                _, status, text = await post(session, url, chat_body("image/jpeg", with_comment(jpeg, i * 100000 + n)))
                if status != 200:
                    raise SystemExit(f"image request failed: {status} {text[:200]}")
                sent[0] += 1

    await asyncio.gather(*(client(i) for i in range(IN_FLIGHT)))


def thread_cpu(pid: int) -> tuple[float, float]:
    """CPU seconds of a gateway's event-loop thread (the main thread) and of all its other threads and its
    image worker processes."""
    loop = rest = 0.0
    for proc in (pid, *children(pid)):
        for tid in os.listdir(f"/proc/{proc}/task"):
            fields = Path(f"/proc/{proc}/task/{tid}/stat").read_text().rsplit(") ", 1)[1].split()
            cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            if int(tid) == pid:
                loop += cpu
            else:
                rest += cpu
    return loop, rest


def probe(urls: tuple[str, str], seconds: float) -> dict[str, subprocess.Popen[bytes]]:
    """Start every probe against (gateway, llama-server) for `seconds`."""
    return {name: subprocess.Popen([sys.executable, "-c", PROBE, urls[direct].rsplit(":", 1)[1], path, body,
                                    str(seconds), str(gap)], stdout=subprocess.PIPE)
            for name, (path, body, gap, direct) in PROBES.items()}


def collect(procs: dict[str, subprocess.Popen[bytes]]) -> dict[str, list[float]]:
    out = {}
    for name, proc in procs.items():
        stdout, _ = proc.communicate(timeout=120)
        out[name] = json.loads(stdout)
    return out


async def loaded(
    urls: tuple[str, str], pid: int, jpeg: bytes, seconds: float
) -> tuple[dict[str, list[float]], float, list[float]]:
    """Probe latencies with IN_FLIGHT image clients running; then, probes done, images/s and the gateway's CPU
    ms per image (loop thread, other threads) over seconds/2 more of images alone."""
    stop, sent = asyncio.Event(), [0]
    load = asyncio.ensure_future(image_load(urls[0], jpeg, stop, sent))
    await asyncio.sleep(1.0)  # all 16 in flight before the probes start
    result = await asyncio.to_thread(collect, probe(urls, seconds))
    cpu0, n0, t = thread_cpu(pid), sent[0], time.perf_counter()
    await asyncio.sleep(seconds / 2)
    cpu1, n1, t1 = thread_cpu(pid), sent[0], time.perf_counter()
    stop.set()
    await load
    cpu = [(b - a) * 1000 / max(1, n1 - n0) for a, b in zip(cpu0, cpu1, strict=False)]
    return result, (n1 - n0) / (t1 - t), cpu


def parse_cost(jpeg: bytes) -> str:
    """The JSON work on the loop for one 12 MP photo request, in this process (best of 30, interleaved)."""
    import orjson

    from vlgate.gateway.endpoint import bodyjson
    from vlgate.images.decode import available_formats
    from vlgate.images.pipeline import Pipeline
    from vlgate.images.settings import ImageSettings

    raw = chat_body("image/jpeg", jpeg)
    s = ImageSettings()
    changed = orjson.loads(raw)
    changed["messages"][0]["content"][0]["image_url"]["url"] = Pipeline(
        s.grid.to_rule(), tuple(available_formats(s.formats)), s.limits, s.encode).run(jpeg).data_url
    steps = {"orjson.loads (before)": lambda: orjson.loads(raw), "bodyjson.loads (after)": lambda: bodyjson.loads(raw),
             "orjson.dumps of the normalized body": lambda: orjson.dumps(changed)}
    best = dict.fromkeys(steps, float("inf"))
    for _ in range(30):
        for name, fn in steps.items():
            t = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t)
    return f"JSON work on the loop per 12 MP photo request ({len(raw) / 1e6:.1f} MB body): " + ", ".join(
        f"{name} {value * 1000:.2f} ms" for name, value in best.items()) + "."


def run(quick: bool) -> tuple[list[str], str]:
    plan = cpu_plan()
    if plan["client"]:
        os.sched_setaffinity(0, plan["client"])
    seconds, rounds = (6.0, 1) if quick else (10.0, 3)
    jpeg = image_files("12 MP photo (JPEG)", 1)[0]
    gateways = {"gw1": GatewaySpec(1, plan["gw1"]), "proc": GatewaySpec(1, plan["gw1"], pool="process"),
                "gw2": GatewaySpec(2, plan["gw2"])}
    labels = {"gw1": "1 CPU, 1 worker thread", "proc": "1 CPU, 1 worker process (images.pool: process)",
              "gw2": "2 CPUs, 2 worker threads"}
    rows = [parse_cost(jpeg), ""]
    print(rows[0], flush=True)
    alone: dict[tuple[str, str], list[float]] = {}
    busy: dict[tuple[str, str], list[float]] = {}
    rates: dict[str, list[float]] = {}
    cpus: dict[str, list[list[float]]] = {}
    with Stack(workdir(), slots=24, gateways=gateways, llama_cpus=plan["llama"]) as stack:
        for r in range(rounds):  # rounds interleave the gateways: the machine's drift hits all alike
            for name in list(labels)[r % 3:] + list(labels)[:r % 3]:
                urls = (stack.urls[name], stack.urls["direct"])
                for probe_name, values in collect(probe(urls, seconds / 2)).items():
                    alone.setdefault((name, probe_name), []).extend(values)
                result, rate, cpu = asyncio.run(loaded(urls, stack.pids[name], jpeg, seconds))
                for probe_name, values in result.items():
                    busy.setdefault((name, probe_name), []).extend(values)
                rates.setdefault(name, []).append(rate)
                cpus.setdefault(name, []).append(cpu)
    for name, label in labels.items():
        loop_ms, other_ms = (median([c[i] for c in cpus[name]]) for i in (0, 1))
        for probe_name in PROBES:
            a, b = alone[(name, probe_name)], busy[(name, probe_name)]
            rows.append(f"| {label} | {probe_name} | {ms(a, 2, True)} | {ms(b, 2, True)} | {median(rates[name]):.1f} "
                        f"| {loop_ms:.1f} / {other_ms:.1f} |")
            print(rows[-1], flush=True)
    return rows, placement(plan)


def markdown(rows: list[str], where: str, quick: bool) -> str:
    head = (f"| gateway | probe | alone p50 / p99 / max ms | with {IN_FLIGHT} images in flight p50 / p99 / max ms "
            "| images/s meanwhile | CPU ms per image: loop thread / other threads |\n|---|---|---|---|---|---|")
    return "\n".join([
        "## Text latency while images are in flight (gateway event-loop stall)", "",
        "How measured: `python bench/loop_stall.py" + (" --quick" if quick else "") + "` — probe processes "
        "(GET /health every 5 ms; text chat max_tokens 1 every 20 ms through the gateway and, as control, "
        f"direct to llama-server) alone, then while {IN_FLIGHT} clients keep "
        "distinct 12 MP JPEG requests (2.6 MB, base64) in flight; real llama-server with 24 slots. CPU per image: "
        "the gateway's threads over a further stretch of images without probes.", "",
        f"Machine: {machine()}; {where}.", "", *rows[:2], head, *rows[2:], ""])


if __name__ == "__main__":
    cli(__doc__, run, markdown)
