"""Prefix-cache reuse with real llama-servers: N backends through vlgate vs ONE server with the same slots.

    python bench/prefix_cache_real.py [--backends 4] [--np 2] [--conversations 16] [--turns 6]
                                      [--think-s 0,0.5,2] [--markdown PATH] [--quick]

N tiny-model llama-servers (b11434, `-np P` each) and one single llama-server with `-np N*P` (the same
slots, the same context per slot), all with the default prompt cache: `cache_prompt`, the host RAM
cache `--cache-ram`, slot choice by `--slot-prompt-similarity` 0.10. A `vlgate serve` fronts the N.
Twice as many conversations as slots run concurrently; each turn resends the shared system prompt,
every earlier turn, the model's answers and a new user message. Each pacing (`--think-s`, a list: the
next turn, and the first, wait uniform(0, S) s; 0 keeps every slot busy, a larger S leaves the fleet quiet) runs
three ways: (a) the single server, (b) turn i to backend i % N directly, (c) through vlgate.
Reported: sum(usage.prompt_tokens_details.cached_tokens) / sum(prompt_tokens), which llama-server
fills from the slot's reused prefix, and (c) / (a). Why a way falls short: each follow-up turn whose
cached prefix is shorter than the previous turn's prompt lost it, either to a move (it went to another
backend than its previous turn: vlgate's access log names the backend, matched by X-Request-ID) or on
the same backend (slot and host cache lost it); first turns reuse only the system prompt, which each
of N servers must prefill once. Each way and pacing uses its own system prompt, so none reuses
another's cache. Every process is stopped by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import emit, free_port, machine, wait_http

from vlgate.launcher.binary import ensure_server
from vlgate.tinymodel.model import write_tiny_model

WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "kilo", "lima",
         "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango", "uniform", "victor", "whiskey",
         "xray", "yankee", "zulu"]
KEPT_SLACK = 8  # a follow-up kept its prefix when its cached tokens reach the previous prompt's, less this


@dataclass
class Turn:
    conv: int
    turn: int
    prompt: int
    cached: int
    request_id: str
    backend: str = ""  # who served it: the URL directly, vlgate's access log through the gateway
    seconds: float = 0.0  # the request's whole time (non-stream: time to the full answer)


@dataclass
class Way:
    name: str
    rows: list[Turn]
    busy: float  # requests in flight / slots, time-averaged over the way's run

    def share(self, follow_only: bool = False) -> float:
        rows = [r for r in self.rows if r.turn > 0 or not follow_only]
        return sum(r.cached for r in rows) / max(1, sum(r.prompt for r in rows))

    @property
    def prompt(self) -> int:
        return sum(r.prompt for r in self.rows)

    def losses(self) -> dict[str, int]:
        """Prompt tokens a follow-up turn failed to reuse from its previous turn, by why (and how many turns)."""
        out = {"moved": 0, "moved_turns": 0, "same": 0, "same_turns": 0, "first_cached": 0}
        prev: dict[int, Turn] = {}
        for r in sorted(self.rows, key=lambda r: (r.conv, r.turn)):
            if r.turn == 0:
                out["first_cached"] += r.cached
            elif (p := prev[r.conv]).prompt - r.cached > KEPT_SLACK:
                why = "moved" if p.backend != r.backend else "same"
                out[why] += p.prompt - r.cached
                out[why + "_turns"] += 1
            prev[r.conv] = r
        return out


def start(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


class Load:
    """Requests in flight, integrated over time: how busy the slots were."""

    def __init__(self) -> None:
        self.n = 0
        self.area = 0.0
        self.since = self.start = time.monotonic()

    def step(self, delta: int) -> None:
        now = time.monotonic()
        self.area += self.n * (now - self.since)
        self.n, self.since = self.n + delta, now


async def conversation(client: httpx.AsyncClient, urls: list[str], system: str, seed: int, think: float,
                       tag: str, load: Load, args: argparse.Namespace) -> list[Turn]:
    """Every turn of one conversation; turn i goes to urls[i % len(urls)]."""
    rng = random.Random(seed)
    messages = [{"role": "system", "content": system}]
    out = []
    await asyncio.sleep(rng.uniform(0.0, think))  # a quiet fleet's conversations do not all start at once
    for turn in range(args.turns):
        messages.append({"role": "user", "content": f"Question {turn} of conversation {seed}: {words(rng, 40)}"})
        url = urls[turn % len(urls)]
        rid = f"{tag}-{seed}-{turn}"
        load.step(+1)
        sent = time.monotonic()
        try:
            r = await client.post(f"{url}/v1/chat/completions", headers={"X-Request-ID": rid}, json={
                "model": "tiny", "messages": messages, "max_tokens": args.max_tokens, "temperature": 0.0})
        finally:
            load.step(-1)
        r.raise_for_status()
        body = r.json()
        usage = body["usage"]
        out.append(Turn(seed, turn, usage["prompt_tokens"], usage["prompt_tokens_details"]["cached_tokens"], rid, url,
                        time.monotonic() - sent))
        messages.append({"role": "assistant", "content": body["choices"][0]["message"]["content"]})
        await asyncio.sleep(rng.uniform(0.0, think))  # the user reads and types
    return out


async def run_way(name: str, urls: list[str], think: float, slots: int, args: argparse.Namespace) -> Way:
    tag = f"{name[:3]}{think:g}".replace("(", "").replace(")", "").replace(".", "_")
    system = f"[{name} {think:g}] You are a careful assistant. " + words(random.Random(name + str(think)), 60)
    load = Load()
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=256)) as client:
        results = await asyncio.gather(*(conversation(client, urls, system, 1000 + i, think, tag, load, args)
                                         for i in range(args.conversations)))
    load.step(0)
    return Way(name, [row for conv in results for row in conv], load.area / max(1e-9, load.since - load.start) / slots)


def attribute(way: Way, log: Path) -> None:
    """Name the backend of each request through the gateway, from its JSON access log (by X-Request-ID)."""
    served = {}
    for line in log.read_text(errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and rec.get("id") and rec.get("backend"):
            served[rec["id"]] = rec["backend"]
    for row in way.rows:
        row.backend = served.get(row.request_id, "?")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backends", type=int, default=4)
    ap.add_argument("--np", type=int, default=2, help="slots per backend (the single server gets backends x np)")
    ap.add_argument("--conversations", type=int, help="concurrent conversations (default: twice the slots)")
    ap.add_argument("--turns", type=int, default=6)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--think-s", default="0,0.5,2",
                    help="pacings, comma-separated: each turn waits up to this long (uniform) before the next; "
                         "0: a saturated fleet")
    ap.add_argument("--no-alternate", action="store_true", help="skip way (b)")
    ap.add_argument("--llama-arg", action="append", default=[], help="one more llama-server argument (repeatable)")
    ap.add_argument("--dump", help="write every request's row (JSON) here")
    ap.add_argument("--markdown", help="write the result as a markdown section here")
    ap.add_argument("--quick", action="store_true", help="fewer turns, no way (b) (well under 3 minutes)")
    args = ap.parse_args()
    slots = args.backends * args.np
    args.conversations = args.conversations or 2 * slots
    if args.quick:
        args.turns, args.no_alternate = 4, True
        args.think_s = args.think_s if "--think-s" in sys.argv else "0,2"
    pacings = [float(s) for s in args.think_s.split(",")]
    binary = ensure_server()
    work = Path(tempfile.mkdtemp(prefix="prefix-cache-real-"))
    tiny = write_tiny_model(work)
    procs: list[subprocess.Popen[bytes]] = []
    started = time.monotonic()

    def server(name: str, np: int) -> str:
        port = free_port()
        procs.append(start([str(binary), "-m", str(tiny.model), "--host", "127.0.0.1", "--port", str(port),
                            "-c", str(2048 * np), "-np", str(np), "-t", "1", *args.llama_arg],
                           work / f"llama-{name}.log"))
        return f"http://127.0.0.1:{port}"

    results: dict[float, list[Way]] = {}
    try:
        single = server("single", slots)
        urls = [server(f"b{i}", args.np) for i in range(args.backends)]
        for url in (single, *urls):
            wait_http(f"{url}/health")
        for think in pacings:  # a fresh gateway each: its smoothed demand is this pacing's alone
            port, log = free_port(), work / f"vlgate-{think:g}.log"
            gw = start([sys.executable, "-m", "vlgate.cli", "serve", "--port", str(port), "--model", "tiny",
                        "--log-level", "info", "--log-json", *(a for u in urls for a in ("--backend", u))], log)
            procs.append(gw)
            gateway = f"http://127.0.0.1:{port}"
            wait_http(f"{gateway}/ready")
            ways = {f"(a) one server, -np {slots}": [single],
                    f"(b) alternating the {args.backends} directly": urls, "(c) through vlgate": [gateway]}
            if args.no_alternate:
                del ways[f"(b) alternating the {args.backends} directly"]
            results[think] = [asyncio.run(run_way(name, way, think, slots, args)) for name, way in ways.items()]
            time.sleep(0.3)  # the access log's last lines
            stop(gw)
            attribute(results[think][-1], log)
    finally:
        for proc in reversed(procs):
            stop(proc)
    if args.dump:
        Path(args.dump).write_text(json.dumps({f"{t:g}": {w.name: [vars(r) for r in w.rows] for w in ways}
                                               for t, ways in results.items()}))
    emit(report(results, args, slots, time.monotonic() - started), args.markdown)
    return 0


def report(results: dict[float, list[Way]], args: argparse.Namespace, slots: int, took: float) -> list[str]:
    first = next(iter(results.values()))[0]
    lines = [
        "## Prefix-cache reuse with real llama-servers (bench/prefix_cache_real.py)",
        "",
        (f"How measured: {args.conversations} concurrent conversations x {args.turns} turns (shared system prompt, "
         f"~{first.prompt // len(first.rows)} tokens per request on average, max_tokens {args.max_tokens}) against "
         f"{args.backends} tiny-model llama-servers b11434 with -np {args.np} behind vlgate, or one with -np {slots} "
         "(default cache_prompt, --cache-ram, --slot-prompt-similarity); cached = "
         f"usage.prompt_tokens_details.cached_tokens; machine: {machine()}; {took:.0f} s."),
        "",
        "| next turn after | way | busy slots | requests | mean s / request | cached / prompt tokens "
        "| follow-up turns only | vs one server |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for think, ways in results.items():
        pause = f"0-{think:g} s" if think else "at once"
        for way in ways:
            mean_s = sum(r.seconds for r in way.rows) / len(way.rows)
            lines.append(f"| {pause} | {way.name} | {way.busy:.0%} | {len(way.rows)} | {mean_s:.2f} "
                         f"| {way.share():.1%} | {way.share(True):.1%} | {way.share() / ways[0].share():.3f}x |")
    lines += ["", "Where the cached tokens went (prompt tokens, share of the way's prompt): follow-up turns that "
              "lost their previous turn's prefix by moving to another backend, or on the same backend (slot and "
              "host cache), and the system prompt reused by first turns.", "",
              "| next turn after | way | lost: moved (turns) | lost: same backend (turns) | first turns' cached |",
              "|---|---|---|---|---|"]
    for think, ways in results.items():
        pause = f"0-{think:g} s" if think else "at once"
        for way in ways:
            lo, p = way.losses(), way.prompt
            moved = f"{lo['moved'] / p:.2%} ({lo['moved_turns']})" if not way.name.startswith("(a)") else "-"
            lines.append(f"| {pause} | {way.name} | {moved} | {lo['same'] / p:.2%} ({lo['same_turns']}) "
                         f"| {lo['first_cached'] / p:.2%} |")
    return lines


if __name__ == "__main__":
    sys.exit(main())
