"""Saturation on real llama-servers: an open-loop run at 100% and 120% of measured capacity, vlgate vs round robin.

    python bench/saturation_real.py [--seconds 40] [--loads 1.0,1.2] [--markdown PATH] [--quick]

Two tiny-model llama-servers (b11434, `-np 2 -t 1` each: 4 slots) and a `vlgate serve` in front. The
workload is bench/fleet_sim.py's in miniature: conversations arrive at random (Poisson, open loop: a slow
fleet does not slow the arrivals), share one of 4 system prompts (~500 tokens), open with a document of
their own (~500 tokens), and run 1-3 turns, each turn resending the whole history after the previous
answer and a short think time; answers are log-normal in length
(`ignore_eos`, so the length is what was asked). Every request streams; TTFT = sent to the first token.

100% load is the simulator's: what the fleet completes with nothing cached (the same conversations back
to back, 8 at a time, `cache_prompt: false` so every prompt is prefilled in full); caching is the headroom
a policy can win. Measured first straight to the servers (round robin: the time scale, the mean time a
request holds a slot), then through the gateway (its CPU shares the two cores with the servers): that rate
is 100%. Then, at each load, two ways on the same arrival schedule:
(a) vlgate; (b) round robin straight to the servers (turn i of the run to server i % 2: what nginx does;
llama-server queues what finds no free slot, with no bound). A refused turn (429/503) ends its
conversation (the user would retry after Retry-After: not modelled).

The gateway's time knobs are scaled to the service time as the simulator's defaults are to its 4.5 s
(queue deadline 30 s = 6.6 service times, holder wait 5 s = 1.1): with a ~0.2 s service here, a 30 s
deadline would never be reached in a run of a minute. Goodput: answers whose first token came within one
mean service time (the simulator's 5 s is 1.1 of its service time). Every process is stopped by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import emit, free_port, machine, wait_http
from prefix_cache_real import start, stop, words

from vlgate.launcher.binary import ensure_server
from vlgate.tinymodel.model import write_tiny_model

SYSTEMS = 4
SIM_SERVICE_S = 4.57  # bench/fleet_sim.py's mean slot time with nothing cached
SIM_DEADLINE_S, SIM_WAIT_S = 30.0, 5.0  # the gateway's defaults, in that time scale


@dataclass
class Turn:
    conv: int
    turn: int
    sent: float  # seconds since the run started
    ttft: float | None = None
    status: int = 0
    retry_after: str | None = None
    waited: float = 0.0  # until the refusal
    prompt: int = 0
    cached: int = 0


@dataclass
class Conversation:
    conv: int
    arrival: float
    system: str
    questions: list[str]
    answers: list[int]  # max_tokens of each turn
    thinks: list[float]
    turns: list[Turn] = field(default_factory=list)


def plan(seed: int, rate: float, seconds: float, systems: list[str], tag: str = "") -> list[Conversation]:
    """Conversations arriving at `rate` per second over `seconds` (a Poisson process); `tag` makes the
    questions of one way its own (the same schedule, no prefix another way left in the caches)."""
    rng = random.Random(seed)
    out: list[Conversation] = []
    t, i = 0.0, 0
    while True:
        t += rng.expovariate(rate)
        if t >= seconds:
            return out
        turns = 1 + min(2, int(rng.expovariate(1 / 1.2)))
        out.append(Conversation(i, t, rng.choice(systems),
                                # the first turn brings the conversation's own document (~500 tokens: what an
                                # image is in the simulator), later turns a short question
                                [f"Question {j} of {i}{tag}: {words(rng, 15)}"
                                 + (f" About this document: {words(rng, 100)}" if j == 0 else "")
                                 for j in range(turns)],
                                [max(8, min(150, int(rng.lognormvariate(math.log(70), 0.6)))) for _ in range(turns)],
                                [rng.expovariate(1 / 0.3) for _ in range(turns)]))
        i += 1


async def one_turn(client: httpx.AsyncClient, url: str, messages: list[dict[str, str]], max_tokens: int,
                   rec: Turn, t0: float, cache: bool = True) -> str | None:
    """Stream one turn; the answer's text, or None when refused (recorded in `rec`). `cache` False: no
    prompt reuse (llama-server's cache_prompt), every token prefilled."""
    body = {"model": "tiny", "messages": messages, "max_tokens": max_tokens, "temperature": 0.0, "stream": True,
            "ignore_eos": True, "stream_options": {"include_usage": True}, "cache_prompt": cache}
    sent = time.monotonic()
    rec.sent = sent - t0
    parts: list[str] = []
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            await r.aread()
            rec.status, rec.retry_after = r.status_code, r.headers.get("retry-after")
            rec.waited = time.monotonic() - sent
            return None
        rec.status = 200
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            for choice in chunk.get("choices") or ():
                content = (choice.get("delta") or {}).get("content")
                if content is not None:
                    if rec.ttft is None:
                        rec.ttft = time.monotonic() - sent
                    parts.append(content)
            usage = chunk.get("usage")
            if usage:
                rec.prompt = usage.get("prompt_tokens", 0)
                rec.cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
    return "".join(parts)


class RoundRobin:
    """Each request to the next server (nginx's default), counted over the whole run."""

    def __init__(self, urls: list[str]) -> None:
        self.urls, self.n = urls, 0

    def next(self) -> str:
        self.n += 1
        return self.urls[self.n % len(self.urls)]


async def converse(client: httpx.AsyncClient, route: RoundRobin, c: Conversation, t0: float,
                   start_at: float | None = None, cache: bool = True) -> None:
    """One conversation: its turns in order (a refused turn ends it)."""
    delay = (c.arrival if start_at is None else start_at) - (time.monotonic() - t0)
    if delay > 0:
        await asyncio.sleep(delay)
    messages = [{"role": "system", "content": c.system}]
    for j, question in enumerate(c.questions):
        messages.append({"role": "user", "content": question})
        rec = Turn(c.conv, j, 0.0)
        c.turns.append(rec)
        try:
            answer = await one_turn(client, route.next(), messages, c.answers[j], rec, t0, cache)
        except httpx.HTTPError as e:
            rec.status, rec.retry_after = -1, type(e).__name__
            return
        if answer is None:
            return
        messages.append({"role": "assistant", "content": answer})
        await asyncio.sleep(c.thinks[j])


async def capacity(urls: list[str], systems: list[str], seconds: float, concurrency: int) -> float:
    """Requests/s completed with `concurrency` conversations back to back (round robin, no think time) and
    nothing cached (every prompt prefilled in full): bench/fleet_sim.py's 100%."""
    convs = plan(99, 1000.0, 10.0, systems)
    for c in convs:
        c.thinks = [0.0] * len(c.thinks)
    route = RoundRobin(urls)
    done: list[Turn] = []
    t0 = time.monotonic()

    async def worker(k: int, client: httpx.AsyncClient) -> None:
        i = k
        while time.monotonic() - t0 < seconds:
            c = convs[i % len(convs)]
            c.turns = []
            await converse(client, route, c, t0, start_at=0.0, cache=False)
            done.extend(t for t in c.turns if t.status == 200 and t.sent < seconds)
            i += concurrency

    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=64)) as client:
        await asyncio.gather(*(worker(k, client) for k in range(concurrency)))
    warm = [t for t in done if t.sent > 2.0]
    return len(warm) / (seconds - 2.0)


async def run_way(url_or_urls: list[str], convs: list[Conversation], seconds: float) -> list[Turn]:
    route = RoundRobin(url_or_urls)
    t0 = time.monotonic()
    async with httpx.AsyncClient(timeout=httpx.Timeout(300, connect=10),
                                 limits=httpx.Limits(max_connections=512, max_keepalive_connections=64)) as client:
        await asyncio.gather(*(converse(client, route, c, t0) for c in convs))
    return [t for c in convs for t in c.turns]


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


def summarize(turns: list[Turn], seconds: float, objective: float) -> dict[str, Any]:
    window = [t for t in turns if t.sent >= seconds * 0.1]  # skip the warm-up
    served = [t for t in window if t.status == 200 and t.ttft is not None]
    refused = [t for t in window if t.status != 200]
    ttft = [t.ttft for t in served if t.ttft is not None]
    prompt = sum(t.prompt for t in served)
    return {
        "offered": len(window), "served": len(served), "refused": len(refused),
        "codes": sorted({t.status for t in refused}),
        "retry_after": sorted({t.retry_after for t in refused}, key=str),
        "refused_after_max": max((t.waited for t in refused), default=0.0),
        "ttft_mean": statistics.fmean(ttft) if ttft else float("nan"),
        "ttft_p50": pct(ttft, 0.5), "ttft_p99": pct(ttft, 0.99),
        "goodput": sum(x <= objective for x in ttft) / (seconds * 0.9),
        "good_share": sum(x <= objective for x in ttft) / len(window) if window else float("nan"),
        "cached": sum(t.cached for t in served) / prompt if prompt else float("nan"),
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=40.0, help="arrivals per run (the first 10%% skipped)")
    ap.add_argument("--loads", default="1.0,1.2")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--markdown", help="write the result as a markdown section here")
    ap.add_argument("--quick", action="store_true", help="25 s per run")
    args = ap.parse_args()
    if args.quick:
        args.seconds = 25.0
    binary = ensure_server()
    work = Path(tempfile.mkdtemp(prefix="saturation-real-"))
    tiny = write_tiny_model(work)
    rng = random.Random(7)
    systems = [f"[system {k}] You are a careful assistant. " + words(rng, 100) for k in range(SYSTEMS)]
    procs: list[subprocess.Popen[bytes]] = []
    started = time.monotonic()
    results: dict[tuple[float, str], dict[str, Any]] = {}
    capacities: dict[float, float] = {}
    try:
        urls = []
        for name in ("a", "b"):
            port = free_port()
            procs.append(start([str(binary), "-m", str(tiny.model), "--host", "127.0.0.1", "--port", str(port),
                                "-c", "4096", "-np", "2", "-t", "1"], work / f"llama-{name}.log"))
            urls.append(f"http://127.0.0.1:{port}")
        for url in urls:
            wait_http(f"{url}/health")
        rate = asyncio.run(capacity(urls, systems, 10.0, 8))  # straight to the servers: the time scale
        service = 4 / rate  # mean time a request holds one of the 4 slots
        deadline = max(1.0, SIM_DEADLINE_S / SIM_SERVICE_S * service)
        hold = SIM_WAIT_S / SIM_SERVICE_S * service
        objective = service
        config = work / "vlgate.yaml"
        config.write_text(json.dumps({"gateway": {"queue": {"timeout_s": round(deadline, 2)},
                                                  "affinity": {"wait_s": round(hold, 3)}}}))
        port = free_port()
        procs.append(start([sys.executable, "-m", "vlgate.cli", "serve", "--config", str(config), "--port", str(port),
                            "--model", "tiny", "--log-level", "warning", "--backend", urls[0], "--backend", urls[1]],
                           work / "vlgate.log"))
        gateway = f"http://127.0.0.1:{port}"
        wait_http(f"{gateway}/ready")
        turns_per_conv = statistics.fmean(len(c.questions) for c in plan(5, 1000.0, 20.0, systems))
        # 100% = what the fleet completes through the gateway with nothing cached (its CPU shares the 2 cores
        # with the servers), measured once so that the loads keep their ratio
        through = asyncio.run(capacity([gateway], systems, 15.0, 8))
        for load in (float(x) for x in args.loads.split(",")):
            capacities[load] = through
            convs_rate = load * through / turns_per_conv
            for way, targets in (("vlgate", [gateway]), ("round robin", urls)):
                convs = plan(args.seed + int(load * 100), convs_rate, args.seconds, systems, f" ({way})")
                before = os.getloadavg()[0]
                turns = asyncio.run(run_way(targets, convs, args.seconds))
                results[load, way] = summarize(turns, args.seconds, objective)
                results[load, way]["loadavg"] = (before, os.getloadavg()[0])
                print(f"[{time.monotonic() - started:.0f} s] {load:.0%} {way}: {results[load, way]}", file=sys.stderr)
    finally:
        for proc in reversed(procs):
            stop(proc)
    lines = [
        "## Saturation on real llama-servers (bench/saturation_real.py)",
        "",
        (f"How measured: two tiny-model llama-servers b11434 (-np 2 -t 1: 4 slots) behind `vlgate serve`; "
         f"{rate:.1f} requests/s completed straight to the servers with nothing cached (closed loop, round robin, 8 "
         f"conversations back to back, cache_prompt off), so a request holds its slot {service * 1000:.0f} ms on "
         f"average; 100% load = what the gateway completes the same way, {through:.1f} requests/s. Open loop, "
         f"{args.seconds:g} s of conversation arrivals per run (the "
         "first 10% skipped), 4 shared system prompts and a document per conversation (~500 tokens each), 1-3 turns, "
         "answers ~70 tokens (log-normal), streamed. "
         f"vlgate's queue deadline {deadline:.2f} s and holder wait {hold * 1000:.0f} ms (the defaults scaled to this "
         f"service time: bench/fleet_sim.py's 30 s and 5 s at 4.6 s); round robin goes straight to the servers. "
         f"Goodput: first token within {objective * 1000:.0f} ms (one service time), per second. A refused turn ends "
         f"its conversation. Machine: {machine()} (shared: the servers, the gateway and this client on the same 2 "
         f"cores); {time.monotonic() - started:.0f} s."),
        "",
        "| load | offered | way | requests | goodput (req/s) | share of offered | TTFT mean (ms) | TTFT p50 (ms) "
        "| TTFT p99 (ms) | refused | cached prompt share | load average |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (load, way), m in results.items():
        refused = (f"{m['refused']} ({', '.join(str(c) for c in m['codes'])}; Retry-After "
                   f"{', '.join(str(r) for r in m['retry_after'])}; after at most {m['refused_after_max']:.2f} s)"
                   if m["refused"] else "0")
        lines.append(f"| {load:.0%} | {load * capacities[load]:.1f} req/s | {way} | {m['offered']} "
                     f"| {m['goodput']:.2f} "
                     f"| {m['good_share']:.0%} | {1000 * m['ttft_mean']:.0f} | {1000 * m['ttft_p50']:.0f} "
                     f"| {1000 * m['ttft_p99']:.0f} | {refused} | {m['cached']:.0%} "
                     f"| {m['loadavg'][0]:.1f} -> {m['loadavg'][1]:.1f} |")
    lines.append("")
    for load in (float(x) for x in args.loads.split(",")):
        ours, rr = results.get((load, "vlgate")), results.get((load, "round robin"))
        if ours and rr:
            good = ours["goodput"] / rr["goodput"] if rr["goodput"] else math.inf
            lines.append(f"- {load:.0%}: vlgate mean TTFT {ours['ttft_mean'] / rr['ttft_mean']:.2f}x round robin's, "
                         f"p99 {ours['ttft_p99'] / rr['ttft_p99']:.2f}x, goodput {good:.2f}x.")
    emit(lines, args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
