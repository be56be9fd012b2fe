"""The store's size for the operator: records and bytes per kind, batch jobs by status (`/metrics`, /status).

Prometheus collects synchronously and the store is async, so both read a cached view: each read that
finds it older than `max_age_s` starts one refresh in the background (two GROUP BY queries), and the
next read shows it. Nothing queries the database while nobody looks.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from vlgate.store.base import BATCH, Store, StoreError
from vlgate.store.sweeper import Sweeper
from vlgate.store.urls import backend_kind

log = logging.getLogger("vlgate.store")


class StoreStats(Collector):
    def __init__(self, store: Store, sweeper: Sweeper | None = None, max_age_s: float = 1.0) -> None:
        self.store = store
        self.sweeper = sweeper
        self.max_age_s = max_age_s
        self.kinds: dict[str, tuple[int, int]] = {}  # kind -> (records, bytes)
        self.batches: dict[str, int] = {}  # status -> jobs
        self.refreshed_at: float | None = None
        self.error = ""  # the last refresh's failure (the database away), "" when it worked
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None

    async def refresh(self) -> None:
        try:
            self.kinds = await self.store.stats()
            self.batches = await self.store.count_by_status(BATCH)
            self.error = ""
        except StoreError as exc:
            self.error = str(exc)
            log.warning("store statistics: %s", exc)
        self.refreshed_at = time.monotonic()

    async def start(self) -> None:
        """A first view now; later ones on demand (from the loop this runs on)."""
        self._loop = asyncio.get_running_loop()
        await self.refresh()

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)

    def _maybe_refresh(self) -> None:
        stale = self.refreshed_at is None or time.monotonic() - self.refreshed_at >= self.max_age_s
        if stale and self._loop is not None and (self._task is None or self._task.done()):
            self._loop.call_soon_threadsafe(self._start_refresh)

    def _start_refresh(self) -> None:
        if self._loop is not None and (self._task is None or self._task.done()):
            self._task = self._loop.create_task(self.refresh())

    def collect(self) -> Iterator[Metric]:
        self._maybe_refresh()
        records = GaugeMetricFamily("vlgate_store_records", "Stored records per kind (batch_line: lines of batch "
                                    "jobs)", labels=["kind"])
        size = GaugeMetricFamily("vlgate_store_bytes", "Bytes of stored JSON and file contents per kind",
                                 labels=["kind"])
        for kind, (n, nbytes) in sorted(self.kinds.items()):
            records.add_metric([kind], n)
            size.add_metric([kind], nbytes)
        batches = GaugeMetricFamily("vlgate_batches", "Batch jobs in the store by status", labels=["status"])
        for status, n in sorted(self.batches.items()):
            batches.add_metric([status], n)
        yield from (records, size, batches)
        if self.sweeper is not None:
            yield CounterMetricFamily("vlgate_store_swept_records", "Expired records the retention sweeper deleted",
                                      value=self.sweeper.swept)

    def describe(self) -> list[Metric]:  # registration must not run a refresh (prometheus calls it once)
        return []

    def status(self) -> dict[str, Any]:
        """The status page's `store` block (the URL without its password)."""
        self._maybe_refresh()
        return {
            "enabled": True,
            "backend": backend_kind(self.store.url),
            "url": self.store.url,
            "kinds": {kind: {"records": n, "bytes": nbytes} for kind, (n, nbytes) in sorted(self.kinds.items())},
            "batches": dict(sorted(self.batches.items())),
            "swept": self.sweeper.swept if self.sweeper is not None else 0,
            "error": self.error,
        }
