"""Slot capacity, read and reported: what `/slots` says is busy, and what this gateway says about itself.

Reading: several gateway replicas may share one backend, so our own in-flight count is not the whole
story. A backend's busy slots are what its `/slots` reports busy that is not ours, plus ours; the
balancer then keeps the replicas together within the slots, up to the poll lag.

Reporting: a node's gateway (`vlgate up` on a GPU node) answers `/slots` in llama-server's shape,
one entry per slot of its ready backends, so an upper `vlgate serve` treats it exactly like a
llama-server and balances by the node's real free slots (its queue counts as busy).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import httpx
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from vlgate.backends import Backend, BackendState


@dataclass(frozen=True, slots=True)
class SlotReport:
    total: int
    busy: int | None  # None: the backend says how many slots, not which are busy (/props)


def parse_slots(data: Any) -> SlotReport | None:
    """llama-server's /slots list (or a node gateway's): count and busy slots."""
    if not isinstance(data, list):
        return None
    busy = sum(1 for s in data if isinstance(s, dict) and s.get("is_processing") is True)
    return SlotReport(len(data), busy)


async def fetch_slots(client: httpx.AsyncClient, backend: Backend) -> SlotReport | None:
    """/slots (live), else /props total_slots (count only); None when neither answers."""
    headers = backend.auth_headers()
    try:
        r = await client.get(backend.url + "/slots", headers=headers)
        report = parse_slots(r.json()) if r.status_code == 200 else None
        if report is not None:
            return report
        r = await client.get(backend.url + "/props", headers=headers)
        if r.status_code == 200:
            total = r.json().get("total_slots")
            if isinstance(total, int) and total > 0:
                return SlotReport(total, None)
    except (httpx.HTTPError, ValueError):
        return None
    return None


# requests a backend holds waiting for a slot: llama-server (--metrics), or a node gateway's queue
_WAITING = ("llamacpp:requests_deferred ", "vlgate:num_requests_waiting ")


async def fetch_waiting(client: httpx.AsyncClient, backend: Backend) -> int:
    """Requests queued at the backend itself (0 when it does not say)."""
    try:
        r = await client.get(backend.url + "/metrics", headers=backend.auth_headers())
    except httpx.HTTPError:
        return 0
    if r.status_code != 200:
        return 0
    for line in r.text.splitlines():
        if line.startswith(_WAITING):
            try:
                return int(float(line.rsplit(" ", 1)[1]))
            except ValueError:
                return 0
    return 0


async def refresh_slots(client: httpx.AsyncClient, backend: Backend) -> SlotReport | None:
    """Slot count (unless fixed by the operator) and other clients' share of the backend's work.

    Demand is the busy slots plus, when every slot is busy, the requests the backend queued: with
    a queue there, some of our in-flight requests may be among the waiting ones, and counting only
    busy slots would let every replica believe the others hold nothing. Returns what `/slots` said
    (the health round passes it on to the fleet scrape, which so does not ask again).
    """
    ours_before = backend.in_flight
    report = await fetch_slots(client, backend)
    if report is None:
        return None
    if not backend.fixed_slots:
        backend.slots = report.total
    if report.busy is None:
        backend.external_busy = 0
        return report
    demand = min(report.busy, backend.slots)
    if backend.slots and demand >= backend.slots:
        demand += await fetch_waiting(client, backend)
    # requests we released while /slots was answering were still busy there; count them as ours
    ours = max(ours_before, backend.in_flight)
    estimate = max(0, demand - ours)
    # a request another replica just sent is not on /slots until llama-server takes it: a slot counts
    # as freed by others only once two polls in a row agree
    backend.external_busy = max(estimate, _last_estimate.get(backend, 0))
    _last_estimate[backend] = estimate
    return report


_last_estimate: weakref.WeakKeyDictionary[Backend, int] = weakref.WeakKeyDictionary()


# ---------------------------------------------------------------------------------- reporting

@dataclass(frozen=True, slots=True)
class NodeLoad:
    """This gateway's load over its ready backends, in the units the tier above balances by."""

    slots: int  # slots of ready backends
    running: int  # requests being served (ours and other clients' seen in /slots)
    queued: int  # requests waiting here for a slot

    @property
    def busy(self) -> int:
        return min(self.slots, self.running + self.queued)

    @property
    def kv_usage(self) -> float:
        """Share of KV cache held: llama-server gives each slot a fixed share of -c, held while it runs."""
        return min(1.0, self.running / self.slots) if self.slots else 0.0


def node_load(backends: Iterable[Backend], queued: int, draining: bool) -> NodeLoad:
    ready = [b for b in backends if b.state is BackendState.READY]
    slots = 0 if draining else sum(b.slots for b in ready)
    running = sum(b.in_flight + b.external_busy for b in ready)
    return NodeLoad(slots, running, queued)


def slots_document(load: NodeLoad) -> list[dict[str, Any]]:
    """llama-server's /slots shape: one entry per slot, the first `busy` of them processing."""
    return [{"id": i, "is_processing": i < load.busy} for i in range(load.slots)]


# ------------------------------------------------------------------ model-server gauges (/metrics)

class ModelServerGauges(Collector):
    """The Gateway API Inference Extension's model-server protocol, for this node as one endpoint.

    The endpoint picker reads TotalQueuedRequests, TotalRunningRequests and KVCacheUtilization gauges
    (vLLM's names by default; any names through an engineConfig: deploy/kubernetes/inference-pool/).
    """

    def __init__(self, read: Callable[[], NodeLoad]) -> None:
        self.read = read

    def collect(self) -> Iterable[GaugeMetricFamily]:
        load = self.read()
        yield GaugeMetricFamily("vlgate:num_requests_waiting", "Requests waiting here for a free slot",
                                value=load.queued)
        yield GaugeMetricFamily("vlgate:num_requests_running", "Requests running on this node's ready backends "
                                "(other clients' seen in /slots included)", value=load.running)
        yield GaugeMetricFamily("vlgate:kv_cache_usage_perc", "Share of KV cache held, 0..1 (each llama-server "
                                "slot owns a fixed share of -c while it runs)", value=load.kv_usage)
        yield GaugeMetricFamily("vlgate:num_slots", "Slots of this node's ready backends", value=load.slots)
