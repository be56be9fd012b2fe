"""Prometheus metrics (prometheus-client), one registry per app so several apps can live in one process."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from vlgate.backends import BackendState
from vlgate.gateway.routing.balancer import Balancer

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Children:
    """A labelled metric's children by label values: the hot path skips prometheus-client's label checks
    (about 1.4 µs a call, five calls a request). Label values here come from bounded sets (routes,
    statuses, configured key names)."""

    def __init__(self, metric: Any) -> None:
        self.metric = metric
        self.cache: dict[tuple[object, ...], Any] = {}

    def __call__(self, *values: object) -> Any:
        child = self.cache.get(values)
        if child is None:
            child = self.cache[values] = self.metric.labels(*(str(v) for v in values))
        return child


class _LiveCollector(Collector):
    """Gauges read at scrape time from the balancer: nothing to update on the hot path."""

    def __init__(self, balancer: Balancer) -> None:
        self.balancer = balancer

    def collect(self) -> Iterable[Metric]:
        b = self.balancer
        yield GaugeMetricFamily("vlgate_in_flight", "Requests being served by backends", value=b.in_flight())
        yield GaugeMetricFamily("vlgate_queued", "Requests waiting for a free slot", value=b.queued)
        yield GaugeMetricFamily("vlgate_draining", "1 while the gateway drains for shutdown", value=int(b.draining))
        yield CounterMetricFamily("vlgate_affinity_hits", "Requests sent to the backend holding their prefix "
                                  "rather than the one with the most free slots", value=b.affinity_hits)
        state = GaugeMetricFamily("vlgate_backend_state", "1 for the backend's current state",
                                  labels=["backend", "state"])
        slots = GaugeMetricFamily("vlgate_backend_slots", "Slots of the backend (llama-server --parallel)",
                                  labels=["backend"])
        busy = GaugeMetricFamily("vlgate_backend_in_flight", "Requests in flight on the backend", labels=["backend"])
        served = GaugeMetricFamily("vlgate_backend_served", "Requests sent to the backend", labels=["backend"])
        for backend in b.backends:
            for s in BackendState:
                state.add_metric([backend.name, s.value], 1.0 if backend.state is s else 0.0)
            slots.add_metric([backend.name], backend.slots)
            busy.add_metric([backend.name], backend.in_flight)
            served.add_metric([backend.name], backend.served)
        yield from (state, slots, busy, served)


class FaultCollector(Collector):
    """What the fault handling refused or took out, read at scrape time from the parts that count it."""

    def __init__(self, ejections: Callable[[], int], retry_budget_refusals: Callable[[], int],
                 key_limit_refusals: Callable[[], int]) -> None:
        self.reads = (ejections, retry_budget_refusals, key_limit_refusals)

    def collect(self) -> Iterable[CounterMetricFamily]:
        ejections, budget, keys = (read() for read in self.reads)
        yield CounterMetricFamily("vlgate_outlier_ejections", "Backends ejected after failures in a row",
                                  value=ejections)
        yield CounterMetricFamily("vlgate_retry_budget_refusals", "Retries not made: the retry budget was spent",
                                  value=budget)
        yield CounterMetricFamily("vlgate_key_limit_refusals", "Requests refused (429) by a per-key limit",
                                  value=keys)


class Metrics:
    def __init__(self, balancer: Balancer) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("vlgate_requests", "Requests by route and status", ["route", "status"],
                                registry=self.registry)
        self.retries = Counter("vlgate_retries", "Attempts retried on another backend", ["route"],
                               registry=self.registry)
        self.latency = Histogram("vlgate_request_duration_seconds", "Whole request time", ["route"],
                                 buckets=_BUCKETS, registry=self.registry)
        self.ttfb = Histogram("vlgate_time_to_first_byte_seconds", "Time until the backend's first byte",
                              ["route"], buckets=_BUCKETS, registry=self.registry)
        self.registry.register(_LiveCollector(balancer))
        self._requests, self._latency, self._ttfb = Children(self.requests), Children(self.latency), Children(self.ttfb)

    def observe(self, route: str, status: int, duration: float, ttfb: float | None) -> None:
        self._requests(route, status).inc()
        self._latency(route).observe(duration)
        if ttfb is not None:
            self._ttfb(route).observe(ttfb)

    def render(self) -> bytes:
        return generate_latest(self.registry)
