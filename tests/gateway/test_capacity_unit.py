"""Slot accounting between replicas and a node's capacity report, on scripted /slots and /metrics answers
(the end-to-end figures with real llama-servers are in test_replicas.py)."""

from __future__ import annotations

import asyncio

import httpx

from vlgate.backends import Backend, BackendState
from vlgate.gateway.fleet.capacity import NodeLoad, node_load, refresh_slots, slots_document


def scripted(answers: list[tuple[int, int]]) -> httpx.AsyncClient:
    """Each /slots call answers the next (busy, total); /metrics says how many requests wait there."""
    state = {"i": -1}

    def handle(request: httpx.Request) -> httpx.Response:
        busy, total = answers[state["i"]] if request.url.path == "/metrics" else answers[state["i"] + 1]
        if request.url.path == "/slots":
            state["i"] += 1
            return httpx.Response(200, json=[{"id": i, "is_processing": i < min(busy, total)} for i in range(total)])
        return httpx.Response(200, text=f"# HELP x\nllamacpp:requests_deferred {max(0, busy - total)}\n")

    return httpx.AsyncClient(transport=httpx.MockTransport(handle), base_url="http://b")


def test_others_work_counts_and_a_freed_slot_needs_two_polls() -> None:
    b = Backend(url="http://b", name="b", slots=1, in_flight=1)
    seen = []

    async def run() -> None:
        # busy = running + waiting: 3 of 2 busy (one waits), then 1, then 1 again
        async with scripted([(3, 2), (1, 2), (1, 2)]) as client:
            for _ in range(3):
                await refresh_slots(client, b)
                seen.append((b.slots, b.external_busy, b.free_slots))

    asyncio.run(run())
    # 3 in demand, 1 ours: 2 are others'; a slot they freed is believed on the second poll that says so
    assert seen == [(2, 2, -1), (2, 2, -1), (2, 0, 1)]


def test_fixed_slots_stay_and_a_quiet_backend_has_no_others() -> None:
    b = Backend(url="http://b", name="b", slots=8, fixed_slots=True)

    async def run() -> None:
        async with scripted([(0, 4)]) as client:
            await refresh_slots(client, b)

    asyncio.run(run())
    assert (b.slots, b.external_busy) == (8, 0)


def test_a_node_reports_ready_slots_with_its_queue_as_busy() -> None:
    ready = Backend(url="http://a", name="a", slots=4, in_flight=2, state=BackendState.READY)
    loading = Backend(url="http://b", name="b", slots=4, state=BackendState.LOADING)
    load = node_load([ready, loading], queued=1, draining=False)
    assert load == NodeLoad(slots=4, running=2, queued=1)
    assert [s["is_processing"] for s in slots_document(load)] == [True, True, True, False]
    assert load.kv_usage == 0.5
    assert slots_document(node_load([ready], queued=0, draining=True)) == []  # draining: no capacity above
    full = node_load([ready], queued=9, draining=False)
    assert sum(s["is_processing"] for s in slots_document(full)) == 4
