"""Balancer and backend-state rules in isolation (the end-to-end tests cover them with real servers)."""

from __future__ import annotations

import asyncio
import time

import pytest

from vlgate.backends import Backend, BackendState
from vlgate.errors import APIError
from vlgate.gateway.balancer import Balancer


def ready(name: str, slots: int) -> Backend:
    b = Backend(url=f"http://{name}", name=name, slots=slots)
    b.set_state(BackendState.READY)
    return b


def test_request_failure_never_overwrites_a_launcher_state() -> None:
    b = ready("a", 1)
    b.set_state(BackendState.CRASHED, "killed by SIGKILL")
    b.mark_failed(BackendState.DOWN, "connection failed")
    assert b.state is BackendState.CRASHED and b.reason == "killed by SIGKILL"
    b.set_state(BackendState.READY)
    b.mark_failed(BackendState.DOWN, "connection failed")
    assert b.state is BackendState.DOWN


def test_most_free_slots_then_the_prefix_holder_within_bounded_load() -> None:
    async def scenario() -> None:
        a, b = ready("a", 4), ready("b", 4)
        bal = Balancer([a, b], affinity_load=1.5)
        first = await bal.acquire(affinity=("conversation",))
        other = b if first is a else a
        # the holder keeps its conversation while its load stays within 1.5x the mean (+1)
        assert await bal.acquire(affinity=("conversation",)) is first
        assert await bal.acquire(affinity=("conversation",)) is first  # 3 <= 1.5 x (1.5 + 1)
        assert await bal.acquire(affinity=("conversation",)) is other  # 4 > 1.5 x (2 + 1): most free slots
        assert (first.in_flight, other.in_flight) == (3, 1)
        assert bal.affinity_hits == 2
        # a new conversation about an image the holder already has: its image key finds it
        assert await bal.acquire(affinity=("new conversation", "image")) is not None
        bal._affinity["image"] = other
        assert bal._holder(("unknown", "image"), frozenset()) is other
        assert bal._holder(("unknown",), frozenset()) is None
        assert bal._holder(None, frozenset()) is None

    asyncio.run(scenario())


def test_a_busy_holder_is_waited_for_a_while_then_not() -> None:
    """Only while the fleet is busy: with half its slots free elsewhere, a request does not wait."""

    async def scenario() -> None:
        a, b = ready("a", 1), ready("b", 2)
        bal = Balancer([a, b], affinity_wait_s=0.3)
        bal._affinity["conv"] = a
        held = await bal.acquire(affinity=("conv",))
        assert held is a
        assert await bal.acquire() is b  # now no backend has half its slots free: the fleet is busy
        waiting = asyncio.create_task(bal.acquire(affinity=("conv",)))
        await asyncio.sleep(0.1)
        assert bal.queued == 1 and b.in_flight == 1  # b has a free slot, but a holds the prefix
        bal.release(a)  # the holder frees up within the wait: it gets its request
        assert await waiting is a and bal.queued == 0
        # the holder stays busy: after affinity_wait_s the request goes where there is room
        started = time.monotonic()
        late = await asyncio.wait_for(bal.acquire(affinity=("conv",)), 2)
        assert late is b and 0.3 <= time.monotonic() - started < 1.0
        assert bal._affinity["conv"] is b  # the conversation's prefix now lives there
        idle_a, idle_b = ready("a2", 4), ready("b2", 4)
        calm = Balancer([idle_a, idle_b], affinity_wait_s=5)
        for _ in range(4):
            await calm.acquire(affinity=("c",))
        # three stay with the holder, the fourth is beyond its bound and goes (at once) to the other
        assert sorted([idle_a.in_flight, idle_b.in_flight]) == [1, 3] and calm.queued == 0

    asyncio.run(scenario())


def test_fifo_queue_429_and_deadline_503() -> None:
    async def scenario() -> None:
        a = ready("a", 1)
        bal = Balancer([a], queue_size=1, queue_timeout_s=0.2)
        held = await bal.acquire()
        waiting = asyncio.create_task(bal.acquire())
        await asyncio.sleep(0)
        assert bal.queued == 1
        with pytest.raises(APIError) as full:
            await bal.acquire()
        assert full.value.status == 429 and "Retry-After" in full.value.headers
        bal.release(held)  # the queued request gets the slot, in order
        assert await waiting is a and a.in_flight == 1
        with pytest.raises(APIError) as late:
            await bal.acquire()
        assert late.value.status == 503 and late.value.code == "queue_timeout"
        assert bal.queued == 0 and a.in_flight == 1  # the timed-out waiter left no trace

    asyncio.run(scenario())


def test_no_hopeful_backend_is_503_at_once() -> None:
    # (draining refuses new requests at the door, not here: tests/gateway/test_drain.py)
    async def scenario() -> None:
        a = ready("a", 1)
        a.set_state(BackendState.FAILED, "crash loop")
        bal = Balancer([a], queue_timeout_s=30)
        with pytest.raises(APIError) as exc:
            await asyncio.wait_for(bal.acquire(), 1)
        assert exc.value.status == 503 and "crash loop" in exc.value.message

    asyncio.run(scenario())


def test_a_backend_becoming_ready_serves_the_queue() -> None:
    async def scenario() -> None:
        a = Backend(url="http://a", name="a", slots=2)  # starting
        bal = Balancer([a], queue_timeout_s=5)
        waiting = asyncio.create_task(bal.acquire())
        await asyncio.sleep(0)
        a.set_state(BackendState.READY)
        assert await asyncio.wait_for(waiting, 1) is a

    asyncio.run(scenario())
