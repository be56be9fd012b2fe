"""Event-loop lag: how late a task that sleeps 50 ms wakes up, as a Prometheus histogram and a recent max.

Why: everything the gateway does runs on one asyncio loop; one slow synchronous step (validating a huge
body, a big JSON parse) delays every request and `/health` at once, and liveness probes then restart a
healthy gateway. The lag shows such stalls where latency histograms only show their victims. It is
measured after the fact (a blocked loop cannot observe itself): a 2 s stall is one 2 s sample when it ends.
Cost: one wake-up per 50 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from prometheus_client import CollectorRegistry, Gauge, Histogram

INTERVAL_S = 0.05
WINDOW_S = 10.0  # `recent_max_s` covers the last 10 to 20 s
_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class LoopLag:
    """Samples the running loop's lag; `recent_max_s` is the worst of the last window (for the status page)."""

    def __init__(self, registry: CollectorRegistry, interval_s: float = INTERVAL_S,
                 window_s: float = WINDOW_S) -> None:
        self.interval_s = interval_s
        self.window_s = window_s
        self.histogram = Histogram("vlgate_event_loop_lag_seconds", "How late a 50 ms sleep on the gateway's "
                                   "event loop woke up (blocking work delays every request)",
                                   buckets=_BUCKETS, registry=registry)
        gauge = Gauge("vlgate_event_loop_lag_max_seconds", "Worst event-loop lag over the last 10-20 s",
                      registry=registry)
        gauge.set_function(lambda: self.recent_max_s)
        self._current = 0.0  # worst of the window being filled
        self._previous = 0.0  # worst of the window before it
        self._window_start = time.monotonic()
        self._task: asyncio.Task[None] | None = None

    @property
    def recent_max_s(self) -> float:
        return max(self._current, self._previous)

    def record(self, lag: float) -> None:
        now = time.monotonic()
        if now - self._window_start >= self.window_s:
            self._previous, self._current = self._current, 0.0
            if now - self._window_start >= 2 * self.window_s:  # no sample for a whole window
                self._previous = 0.0
            self._window_start = now
        self._current = max(self._current, lag)
        self.histogram.observe(lag)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="loop-lag")

    async def _run(self) -> None:
        while True:
            started = time.perf_counter()
            await asyncio.sleep(self.interval_s)
            self.record(max(0.0, time.perf_counter() - started - self.interval_s))

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
