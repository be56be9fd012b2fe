"""Balancer and backend-state rules in isolation (the end-to-end tests cover them with real servers)."""

from __future__ import annotations

import asyncio

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


def test_most_free_slots_then_affinity_among_near_equals() -> None:
    async def scenario() -> None:
        a, b = ready("a", 4), ready("b", 4)
        bal = Balancer([a, b], affinity_slack=1)
        first = await bal.acquire(affinity="prefix")
        # the other backend has one more free slot: within the slack, affinity wins
        assert await bal.acquire(affinity="prefix") is first
        # now the sticky one has 2 free vs 4: most free slots wins
        other = await bal.acquire(affinity="prefix")
        assert other is not first
        assert (a.in_flight, b.in_flight) in ((2, 1), (1, 2))

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


def test_no_hopeful_backend_is_503_at_once_and_draining_refuses() -> None:
    async def scenario() -> None:
        a = ready("a", 1)
        a.set_state(BackendState.FAILED, "crash loop")
        bal = Balancer([a], queue_timeout_s=30)
        with pytest.raises(APIError) as exc:
            await asyncio.wait_for(bal.acquire(), 1)
        assert exc.value.status == 503 and "crash loop" in exc.value.message
        bal.draining = True
        with pytest.raises(APIError) as drain:
            await bal.acquire()
        assert drain.value.code == "draining"

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
