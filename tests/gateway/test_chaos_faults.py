"""Chaos with the faults a real llama-server cannot show on demand: a fleet of scripted backends that hang
before headers, die after N chunks, stall mid-stream, always answer 500, stay loading, or answer garbage,
beside one healthy backend, under load. Every request ends in a defined way, quickly; nothing is lost."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter

import httpx
import pytest

from support.chaos import post_chat, proper_error, stream_outcome
from support.fakebackend import FakeBackend
from support.gateway_process import GatewayProcess

pytestmark = pytest.mark.slow
DURATION_S = 12.0
FAULTS = ["hang", "die_after", "stall_after", "status", "loading", "garbage", "cut_body"]


async def one(client: httpx.AsyncClient, url: str, i: int, counts: Counter[str], bad: list[str]) -> None:
    stream = i % 2 == 0
    body = {"model": "youtu-vl", "max_tokens": 8, "stream": stream, "messages": [{"role": "user", "content": f"q{i}"}]}
    kind = "stream" if stream else "plain"
    started = time.monotonic()
    r, raw = await post_chat(client, url, body)
    if time.monotonic() - started > 8:
        bad.append(f"{kind} {i}: took {time.monotonic() - started:.1f}s")
    if r is None:
        counts[f"{kind} lost"] += 1
        bad.append(f"{kind} {i}: {raw}")
    elif r.status_code != 200:
        counts[f"{kind} {r.status_code}"] += 1
        if not proper_error(r, raw):
            bad.append(f"{kind} {i}: {r.status_code} {dict(r.headers)} {raw[:200]}")
    elif not stream:
        counts["plain ok" if json.loads(raw)["choices"] else "plain incomplete"] += 1
    else:
        outcome = stream_outcome(raw)
        counts[f"stream {outcome}"] += 1
        if outcome == "truncated":
            bad.append(f"stream {i}: {raw[-200:]!r}")


def test_every_fault_ends_in_a_defined_way(tmp_path) -> None:
    backends = [FakeBackend(mode=m, die_after=2, status=500).start() for m in FAULTS] + [FakeBackend(slots=4).start()]
    gw = GatewayProcess({"backends": [{"url": b.url, "name": b.mode + str(i)} for i, b in enumerate(backends)],
                         "gateway": {"request_timeout_s": 2, "stream_idle_timeout_s": 1.5,
                                     "retry": {"first_byte_timeout_s": 1.5},
                                     "queue": {"size": 64, "timeout_s": 5}}},
                        tmp_path).start()
    counts: Counter[str] = Counter()
    bad: list[str] = []
    try:
        gw.wait_ready()

        async def run() -> None:
            until = time.monotonic() + DURATION_S
            async with httpx.AsyncClient(timeout=30) as client:
                n = 0

                async def worker() -> None:
                    nonlocal n
                    while time.monotonic() < until:
                        n += 1
                        await one(client, gw.url, n, counts, bad)

                await asyncio.gather(*(worker() for _ in range(12)))

        asyncio.run(run())
        print("\nfault chaos:", json.dumps(dict(sorted(counts.items()))))
        assert bad == [], bad[:5]
        assert counts["plain ok"] > 10 and counts["stream ok"] > 10
        # the sick backends were ejected or are out: most work went to the healthy one
        state = {b["name"]: b["state"] for b in gw.ready()["backends"]}
        assert state["ok7"] == "ready"
        assert httpx.get(gw.url + "/health").status_code == 200
        ejections = next(ln for ln in httpx.get(gw.url + "/metrics").text.splitlines()
                         if ln.startswith("vlgate_outlier_ejections_total "))
        assert float(ejections.split()[1]) >= 3  # the sick backends were taken out, more than once
        assert "Traceback" not in gw.log()
    finally:
        gw.stop()
        for b in backends:
            b.stop()
