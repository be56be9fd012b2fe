"""The last few minutes of traffic in fixed buckets: requests/s, tokens/s, p50/p99 latency and TTFT.

For the status page's live charts (Prometheus histograms serve the long term). Recording is O(1): a
request lands in the current bucket; percentiles are computed only when the page asks.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

BUCKET_S = 5
BUCKETS = 60  # 5 minutes
_SAMPLES = 512  # per bucket and kind: enough for p99 of what a page can show


@dataclass(slots=True)
class _Bucket:
    start: int
    requests: int = 0
    errors: int = 0
    tokens: float = 0.0
    latency: list[float] = field(default_factory=list)
    ttft: list[float] = field(default_factory=list)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Timeline:
    def __init__(self, bucket_s: int = BUCKET_S, buckets: int = BUCKETS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.bucket_s = bucket_s
        self.clock = clock
        self._buckets: deque[_Bucket] = deque(maxlen=buckets)

    def _now_bucket(self) -> _Bucket:
        start = int(self.clock() // self.bucket_s) * self.bucket_s
        if not self._buckets or self._buckets[-1].start != start:
            self._buckets.append(_Bucket(start))
        return self._buckets[-1]

    def record(self, duration_s: float, ttft_s: float | None, ok: bool) -> None:
        b = self._now_bucket()
        b.requests += 1
        b.errors += not ok
        if len(b.latency) < _SAMPLES:
            b.latency.append(duration_s)
        if ttft_s is not None and len(b.ttft) < _SAMPLES:
            b.ttft.append(ttft_s)

    def add_tokens(self, n: float) -> None:
        if n > 0:
            self._now_bucket().tokens += n

    def series(self) -> dict[str, Any]:
        """One point per bucket, oldest first, empty buckets included (a chart's x axis is time)."""
        now = self.clock()
        current = int(now // self.bucket_s) * self.bucket_s
        by_start = {b.start: b for b in self._buckets}
        out: dict[str, list[Any]] = {k: [] for k in ("t", "rps", "tps", "errors", "p50", "p99", "ttft_p50", "ttft_p99")}
        n = self._buckets.maxlen or BUCKETS
        for i in range(n - 1, -1, -1):
            start = current - i * self.bucket_s
            b = by_start.get(start) or _Bucket(start)
            span = max(1.0, now - start) if i == 0 else float(self.bucket_s)
            out["t"].append(start - current)
            out["rps"].append(round(b.requests / span, 3))
            out["tps"].append(round(b.tokens / span, 2))
            out["errors"].append(b.errors)
            for key, values, q in (("p50", b.latency, 0.5), ("p99", b.latency, 0.99),
                                   ("ttft_p50", b.ttft, 0.5), ("ttft_p99", b.ttft, 0.99)):
                v = percentile(values, q)
                out[key].append(None if v is None else round(v * 1000, 1))
        return {"bucket_s": self.bucket_s, **out}

    def rates(self, window_s: float = 60.0) -> dict[str, float | None]:
        """Requests/s, tokens/s and latency percentiles over the last `window_s` (the numbers beside the charts)."""
        now = self.clock()
        since = now - window_s
        recent = [b for b in self._buckets if b.start + self.bucket_s > since]
        span = max(1.0, now - max(since, recent[0].start)) if recent else window_s
        out: dict[str, float | None] = {"rps": round(sum(b.requests for b in recent) / span, 3),
                                        "tps": round(sum(b.tokens for b in recent) / span, 2)}
        latency = [v for b in recent for v in b.latency]
        ttft = [v for b in recent for v in b.ttft]
        for key, values, q in (("p50_ms", latency, 0.5), ("p99_ms", latency, 0.99),
                               ("ttft_p50_ms", ttft, 0.5), ("ttft_p99_ms", ttft, 0.99)):
            v = percentile(values, q)
            out[key] = None if v is None else round(v * 1000, 1)
        return out


class Timelines:
    """One timeline per backend plus the gateway's own, created on first use."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.gateway = Timeline(clock=clock)
        self.backends: dict[str, Timeline] = {}

    def of(self, backend: str) -> Timeline:
        line = self.backends.get(backend)
        if line is None:
            line = self.backends[backend] = Timeline(clock=self.clock)
        return line

    def record(self, backend: str | None, duration_s: float, ttft_s: float | None, ok: bool) -> None:
        self.gateway.record(duration_s, ttft_s, ok)
        if backend is not None:
            self.of(backend).record(duration_s, ttft_s, ok)

    def add_tokens(self, backend: str, n: float) -> None:
        self.gateway.add_tokens(n)
        self.of(backend).add_tokens(n)
