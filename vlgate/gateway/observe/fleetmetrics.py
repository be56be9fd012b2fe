"""Every backend's own llama-server series, scraped in the health loop and re-exported with a `backend` label.

One Prometheus target then sees the whole fleet (and `gpu` under `vlgate up`). The text is parsed
with prometheus-client's parser; series keep llama-server's names (`llamacpp:*`), so dashboards written
for llama-server work with a `backend` selector. Beside it: `/slots` (busy/total) as the health round
just read it, and NVML for a GPU backend; a backend that stops answering drops its series (no stale values).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass

import httpx
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from vlgate.backends import Backend, BackendState
from vlgate.gateway.fleet.capacity import SlotReport, fetch_slots
from vlgate.gateway.observe.gpustats import Gpus, GpuSample
from vlgate.gateway.observe.timeline import Timelines

log = logging.getLogger("vlgate.gateway.observe.fleetmetrics")

# answering backends: worth a scrape (others answer nothing, or only "Loading model")
_SCRAPED = {BackendState.READY, BackendState.SUSPECT, BackendState.DRAINING}
_GENERATED = "llamacpp:tokens_predicted_total"


@dataclass
class Scrape:
    """What one backend reported at its last scrape."""

    families: list[Metric]
    slots_busy: int | None
    slots_total: int | None
    gpu: GpuSample | None
    seconds: float  # what the scrape took (/metrics, and /slots when the health round did not read it)
    at: float


class FleetScraper:
    def __init__(self, client: httpx.AsyncClient, timelines: Timelines) -> None:
        self.client = client
        self.timelines = timelines
        self.gpus = Gpus()
        self.last: dict[str, Scrape] = {}
        self._generated: dict[str, float] = {}  # last llamacpp:tokens_predicted_total per backend

    async def scrape(self, backend: Backend, slots: SlotReport | None = None) -> None:
        """One backend's /metrics and GPU, beside the `slots` its health round read; after each round."""
        if backend.state not in _SCRAPED:
            self.last.pop(backend.name, None)
            self._generated.pop(backend.name, None)
            return
        started = time.perf_counter()
        metrics = await self._get(backend, "/metrics")
        if slots is None:  # the round did not read /slots (a draining or ejected backend): read it here
            slots = await fetch_slots(self.client, backend)
        families = _parse(metrics.text) if metrics is not None and metrics.status_code == 200 else []
        busy: int | None = None  # None: /props gave a count, not which are busy
        total: int | None = None
        if slots is not None and slots.busy is not None:
            busy, total = slots.busy, slots.total
        gpu = self.gpus.sample(backend.gpu)
        self.last[backend.name] = Scrape(families, busy, total, gpu, time.perf_counter() - started, time.time())
        self._count_tokens(backend.name, families)

    async def _get(self, backend: Backend, path: str) -> httpx.Response | None:
        try:
            return await self.client.get(backend.url + path, headers=backend.auth_headers())
        except httpx.HTTPError:
            return None

    def _count_tokens(self, name: str, families: list[Metric]) -> None:
        """Generated tokens since the last scrape go to the backend's timeline (tokens/s on the page)."""
        value = next((s.value for f in families for s in f.samples if s.name == _GENERATED), None)
        if value is None:
            return
        before = self._generated.get(name)
        self._generated[name] = value
        if before is not None and value >= before:  # a restart resets the counter: skip that interval
            self.timelines.add_tokens(name, value - before)

    def has_series(self, name: str) -> bool:
        """Whether tokens/s for this backend come from its own counter (else from reported usage)."""
        return name in self._generated

    def close(self) -> None:
        self.gpus.close()


def _parse(text: str) -> list[Metric]:
    try:
        return list(text_string_to_metric_families(text))
    except (ValueError, TypeError) as exc:  # not Prometheus text: nothing to re-export
        log.warning("backend /metrics is not Prometheus text: %s", exc)
        return []


class FleetCollector(Collector):
    """The last scrape of every backend as Prometheus series, labelled `backend` (and `gpu`)."""

    def __init__(self, scraper: FleetScraper, backends: list[Backend]) -> None:
        self.scraper = scraper
        self.backends = backends

    def collect(self) -> Iterable[Metric]:
        merged: dict[str, Metric] = {}
        scrape_s = GaugeMetricFamily("vlgate_backend_scrape_seconds", "Time the gateway's last scrape of the "
                                     "backend's /metrics and /slots took", labels=["backend"])
        busy = GaugeMetricFamily("vlgate_backend_slots_busy", "Slots processing (llama-server /slots)",
                                 labels=["backend"])
        gpu_used = GaugeMetricFamily("vlgate_gpu_memory_used_bytes", "GPU memory in use (NVML)",
                                     labels=["backend", "gpu"])
        gpu_total = GaugeMetricFamily("vlgate_gpu_memory_total_bytes", "GPU memory (NVML)", labels=["backend", "gpu"])
        gpu_util = GaugeMetricFamily("vlgate_gpu_utilization_ratio", "GPU busy share of the last sample period (NVML)",
                                     labels=["backend", "gpu"])
        for backend in self.backends:
            last = self.scraper.last.get(backend.name)
            if last is None:
                continue
            extra = {"backend": backend.name}
            if backend.gpu is not None:
                extra["gpu"] = backend.gpu
            for family in last.families:
                out = merged.get(family.name)
                if out is None:
                    out = merged[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
                for s in family.samples:
                    out.add_sample(s.name, {**s.labels, **extra}, s.value, s.timestamp)
            scrape_s.add_metric([backend.name], last.seconds)
            if last.slots_busy is not None:
                busy.add_metric([backend.name], last.slots_busy)
            if last.gpu is not None and backend.gpu is not None:
                gpu_used.add_metric([backend.name, backend.gpu], last.gpu.memory_used)
                gpu_total.add_metric([backend.name, backend.gpu], last.gpu.memory_total)
                gpu_util.add_metric([backend.name, backend.gpu], last.gpu.utilization / 100)
        yield from merged.values()
        yield from (scrape_s, busy, gpu_used, gpu_total, gpu_util)
