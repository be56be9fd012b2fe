"""Prefix-cache reuse with real llama-servers: multi-turn conversations through vlgate vs alternating backends.

    python bench/prefix_cache_real.py [--conversations 8] [--turns 6] [--think-s 0] [--markdown PATH] [--quick]

Two tiny-model llama-servers (b11434, `-np 2` each, default prompt cache: `cache_prompt` and the host
RAM cache `--cache-ram`, slot choice by `--slot-prompt-similarity` 0.10) and a `vlgate serve` in front.
N conversations run concurrently (twice the 4 slots: vlgate really has to balance and queue; with
`--think-s 0`, the default, every slot stays busy, so vlgate's busy-fleet rules apply); each turn
resends the shared system prompt, every earlier turn, the model's answers and a new user message. Three ways:
(a) every request to server A, (b) turn i to backend i % 2 directly,
(c) through vlgate. Reported: sum(usage.prompt_tokens_details.cached_tokens) / sum(prompt_tokens),
which llama-server fills from the slot's reused prefix (server-task.cpp), and (c) / (a).
Each way uses its own system prompt, so no way reuses another's cache. Every process is stopped by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
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


async def conversation(client: httpx.AsyncClient, urls: list[str], system: str, seed: int,
                       args: argparse.Namespace) -> list[tuple[int, int, int]]:
    """(turn, prompt_tokens, cached_tokens) of each turn; turn i goes to urls[i % len(urls)]."""
    rng = random.Random(seed)
    messages = [{"role": "system", "content": system}]
    out = []
    for turn in range(args.turns):
        messages.append({"role": "user", "content": f"Question {turn} of conversation {seed}: {words(rng, 40)}"})
        r = await client.post(f"{urls[turn % len(urls)]}/v1/chat/completions", json={
            "model": "tiny", "messages": messages, "max_tokens": args.max_tokens, "temperature": 0.0})
        r.raise_for_status()
        body = r.json()
        usage = body["usage"]
        out.append((turn, usage["prompt_tokens"], usage["prompt_tokens_details"]["cached_tokens"]))
        messages.append({"role": "assistant", "content": body["choices"][0]["message"]["content"]})
        await asyncio.sleep(rng.uniform(0.0, args.think_s))  # the user reads and types
    return out


async def run_way(urls: list[str], tag: str, args: argparse.Namespace) -> dict[str, float]:
    system = f"[{tag}] You are a careful assistant. " + words(random.Random(tag), 60)
    async with httpx.AsyncClient(timeout=120) as client:
        results = await asyncio.gather(*(conversation(client, urls, system, 1000 + i, args)
                                         for i in range(args.conversations)))
    rows = [row for conv in results for row in conv]
    follow = [row for row in rows if row[0] > 0]
    return {"ratio": sum(r[2] for r in rows) / sum(r[1] for r in rows),
            "follow": sum(r[2] for r in follow) / sum(r[1] for r in follow),
            "requests": len(rows), "prompt": sum(r[1] for r in rows)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--conversations", type=int, default=8)
    ap.add_argument("--turns", type=int, default=6)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--think-s", type=float, default=0.0,
                    help="each turn waits up to this long (uniform) before the next; 0: a saturated fleet")
    ap.add_argument("--markdown", help="write the result as a markdown section here")
    ap.add_argument("--quick", action="store_true", help="fewer conversations and turns (well under 2 minutes)")
    args = ap.parse_args()
    if args.quick:
        args.conversations, args.turns = 6, 4
    binary = ensure_server()
    work = Path(tempfile.mkdtemp(prefix="prefix-cache-real-"))
    tiny = write_tiny_model(work)
    procs: list[subprocess.Popen[bytes]] = []
    started = time.monotonic()
    try:
        urls = []
        for name in ("a", "b"):
            port = free_port()
            procs.append(start([str(binary), "-m", str(tiny.model), "--host", "127.0.0.1", "--port", str(port),
                                "-c", "4096", "-np", "2", "-t", "1"], work / f"llama-{name}.log"))
            urls.append(f"http://127.0.0.1:{port}")
        for url in urls:
            wait_http(f"{url}/health")
        port = free_port()
        procs.append(start([sys.executable, "-m", "vlgate.cli", "serve", "--port", str(port), "--model", "tiny",
                            "--log-level", "warning", "--backend", urls[0], "--backend", urls[1]],
                           work / "vlgate.log"))
        gateway = f"http://127.0.0.1:{port}"
        wait_http(f"{gateway}/ready")
        ways = {"(a) one server": [urls[0]], "(b) alternating the two directly": urls, "(c) through vlgate": [gateway]}
        results = {name: asyncio.run(run_way(way, name, args))
                   for name, way in ways.items()}
    finally:
        for proc in reversed(procs):
            stop(proc)
    single = results["(a) one server"]["ratio"]
    pause = f"after 0-{args.think_s:g} s" if args.think_s else "at once: every slot stays busy"
    lines = [
        "## Prefix-cache reuse with real llama-servers (bench/prefix_cache_real.py)",
        "",
        (f"How measured: {args.conversations} concurrent conversations x {args.turns} turns (shared system prompt, "
        f"~{results['(a) one server']['prompt'] // (args.conversations * args.turns)} tokens per request on average, "
        f"max_tokens {args.max_tokens}, next turn {pause}), two tiny-model llama-servers b11434 with -np 2 "
        "(default cache_prompt, "
        "--cache-ram, --slot-prompt-similarity), cached = usage.prompt_tokens_details.cached_tokens; "
        f"machine: {machine()}; {time.monotonic() - started:.0f} s."),
        "",
        "| way | requests | cached / prompt tokens | follow-up turns only | vs one server |",
        "|---|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(f"| {name} | {r['requests']:.0f} | {r['ratio']:.1%} | {r['follow']:.1%} "
                     f"| {r['ratio'] / single:.2f}x |")
    emit(lines, args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
