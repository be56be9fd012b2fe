"""Chaos under load: real llama-servers under `vlgate up`, one SIGKILLed every few seconds while load runs above
the total slots. Nothing may be lost: every non-stream request ends 200 or a 429/503 with Retry-After; every
stream ends with [DONE] or an error event (never silently truncated); no 500 from the gateway's own code; no
process outlives vlgate. The counts are printed (run with -s) and written to chaos.json in the test's folder.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_launcher_up import config, up  # noqa: F401  (the `up` fixture)

from support.chaos import post_chat, proper_error, stream_outcome
from vlgate.tinymodel.model import TinyModel

pytestmark = pytest.mark.slow
DURATION_S = float(os.environ.get("VLGATE_CHAOS_S", "120"))
CONCURRENCY = 10  # 2 backends x 2 slots: 2.5x the slots
KILL_EVERY_S = 4.0


async def one_request(client: httpx.AsyncClient, url: str, i: int, counts: Counter[str], bad: list[str]) -> None:
    stream = i % 2 == 0
    body: dict[str, Any] = {"model": "youtu-vl", "max_tokens": random.randint(4, 24), "stream": stream,
                            "messages": [{"role": "user", "content": f"chaos {i} " + "word " * random.randint(1, 30)}]}
    if stream:
        body["stream_options"] = {"include_usage": True}
    kind = "stream" if stream else "plain"
    r, raw = await post_chat(client, url, body)
    if r is None:
        counts[f"{kind} lost"] += 1
        bad.append(f"{kind} {i}: {raw}")
    elif r.status_code in (429, 503) and proper_error(r, raw):
        counts[f"{kind} refused {r.status_code}"] += 1
    elif r.status_code != 200:
        counts[f"{kind} status {r.status_code}"] += 1
        bad.append(f"{kind} {i}: {r.status_code} {dict(r.headers)} {raw[:300]}")
    elif not stream:
        answer = json.loads(raw)
        complete = answer["choices"][0]["message"]["content"] is not None and "usage" in answer
        counts["plain ok" if complete else "plain incomplete"] += 1
        if not complete:
            bad.append(f"plain {i}: {raw[:300]}")
    else:
        outcome = stream_outcome(raw)
        counts[f"stream {outcome}"] += 1
        if outcome == "truncated":
            bad.append(f"stream {i}: {raw[-300:]!r}")


async def load(url: str, until: float, counts: Counter[str], bad: list[str]) -> None:
    limits = httpx.Limits(max_connections=CONCURRENCY * 2)
    async with httpx.AsyncClient(timeout=httpx.Timeout(60.0), limits=limits) as client:
        n = 0

        async def worker(w: int) -> None:
            nonlocal n
            while time.monotonic() < until:
                n += 1
                await one_request(client, url, n, counts, bad)

        await asyncio.gather(*(worker(w) for w in range(CONCURRENCY)))


async def killer(u: Any, until: float, kills: list[int]) -> None:
    while time.monotonic() < until - KILL_EVERY_S:
        await asyncio.sleep(KILL_EVERY_S)
        pids = u.backend_pids()
        if pids:
            victim = random.choice(pids)
            os.kill(victim, signal.SIGKILL)
            kills.append(victim)


def test_nothing_is_lost_while_backends_are_killed_under_load(
    up: Any, llama_server_bin: Path, tiny_model: TinyModel, tmp_path: Path  # noqa: F811
) -> None:
    random.seed(7)
    cfg = config(llama_server_bin, tiny_model, tmp_path, n_predict=32,
                 restart={"backoff_initial_s": 0.2, "backoff_max_s": 1, "backoff_jitter_s": 0.1,
                          "crash_loop_count": 1000})
    cfg["gateway"]["queue"] = {"size": 64, "timeout_s": 10}
    u = up(cfg)
    u.ready()
    counts: Counter[str] = Counter()
    bad: list[str] = []
    kills: list[int] = []
    until = time.monotonic() + DURATION_S

    async def run() -> None:
        await asyncio.gather(load(u.url, until, counts, bad), killer(u, until, kills))

    asyncio.run(run())
    report = {"duration_s": DURATION_S, "concurrency": CONCURRENCY, "kills": len(kills),
              "requests": sum(counts.values()), **dict(sorted(counts.items()))}
    (tmp_path / "chaos.json").write_text(json.dumps(report, indent=2))
    print("\nchaos:", json.dumps(report))
    assert bad == [], f"{len(bad)} bad outcomes, first: {bad[:5]}\ncounts: {report}"
    assert len(kills) >= DURATION_S / KILL_EVERY_S - 2
    assert counts["plain ok"] > 0 and counts["stream ok"] > 0
    log = u.output()
    assert "Internal gateway error" not in log and "Traceback" not in log, log[-3000:]
    assert u.stop() == 0
