"""Balancer and backend-state rules in isolation (the end-to-end tests cover them with real servers)."""

from __future__ import annotations

import asyncio

import pytest

from vlgate.backends import Backend, BackendState
from vlgate.errors import APIError
from vlgate.gateway.routing.balancer import Balancer


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
        bal.holders.record(("image",), other)
        assert bal.holders.holder(("unknown", "image"), frozenset()) is other
        assert bal.holders.holder(("unknown",), frozenset()) is None
        assert bal.holders.holder(None, frozenset()) is None

    asyncio.run(scenario())


def test_a_full_holder_is_not_waited_for_while_the_fleet_is_quiet() -> None:
    """Waiting would leave the free slot elsewhere idle: pure added latency (bench/fleet_sim.py, 70% load)."""

    async def scenario() -> None:
        a, b = ready("a", 1), ready("b", 3)
        bal = Balancer([a, b])
        bal.holders.record(("conv",), a)
        assert await bal.acquire(affinity=("conv",)) is a
        assert bal.utilization < 0.72  # two of four slots busy at most
        assert await bal.acquire(affinity=("conv",)) is b and bal.queued == 0
        assert bal.holders.get("conv") is b  # the conversation's prefix now lives there

    asyncio.run(scenario())


def test_utilization_follows_the_slots_arrivals_find_busy() -> None:
    async def scenario() -> None:
        a = ready("a", 2)
        bal = Balancer([a], queue_timeout_s=5)
        held = [await bal.acquire(), await bal.acquire()]  # arrivals see 0 (no capacity known yet), then 1/2
        queued = [asyncio.create_task(bal.acquire()) for _ in range(4)]
        await asyncio.sleep(0)
        assert bal.queued == 4
        # (running + queued) / slots as each arrival found it: 1/2, 2/2, 3/2, 4/2, 5/2; a plain mean at first
        assert bal.utilization == pytest.approx((0.5 + 1.0 + 1.5 + 2.0 + 2.5) / 5)
        for backend in held:
            bal.release(backend)
        await asyncio.sleep(0)
        assert [t.done() for t in queued] == [True, True, False, False]  # FIFO
        for t in queued[2:]:
            t.cancel()

    asyncio.run(scenario())


class Clock:
    """The balancer's clock, moved by hand: waits are decided by what the balancer sees, not by sleeping."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_busy_fleet_waits_for_the_holder_a_while_and_not_behind_a_long_line() -> None:
    async def scenario() -> None:
        a, b = ready("a", 2), ready("b", 4)
        clock = Clock()
        bal = Balancer([a, b], affinity_wait_s=5, clock=clock)
        assert await bal.acquire() is b
        bal.holders.record(("conv",), a)
        assert [await bal.acquire(affinity=("conv",)) for _ in range(2)] == [a, a]  # a is full, within its bound
        bal.utilization, bal._samples = 0.9, 500  # busy for the last 500 arrivals: a free slot is soon taken
        for i in range(5):  # five other conversations a holds
            bal.holders.record((f"c{i}",), a)
        line = [asyncio.create_task(bal.acquire(affinity=(f"c{i}",))) for i in range(5)]
        await asyncio.sleep(0)
        # four wait for their prefix holder (twice its slots); the fifth would wait behind them: it goes to b
        assert [t.done() for t in line] == [False, False, False, False, True] and line[4].result() is b
        assert bal.queued == 4
        # a newcomer without a prefix is not held up behind them: b's free slot is its
        assert await bal.acquire() is b and bal.queued == 4
        bal.release(a)  # the holder frees a slot: the first in line gets it
        await asyncio.sleep(0)
        assert [t.done() for t in line[:4]] == [True, False, False, False] and line[0].result() is a
        # the holder stays full: once affinity_wait_s has passed, the others go where there is room
        clock.now = 5.0
        bal.wake()
        await asyncio.sleep(0)
        assert line[1].done() and line[1].result() is b and not line[2].done()  # b had one free slot
        assert bal.holders.get("c1") is b  # that conversation's prefix now lives there
        for t in line[2:4]:
            t.cancel()

    asyncio.run(scenario())


def test_a_busy_fleet_never_waits_while_a_backend_sits_idle() -> None:
    """A backend that just joined (or restarted) holds no prefix yet, and the smoothed demand still says busy:
    the holder's line must not leave it idle (found by tests/gateway/test_discovery.py)."""
    async def scenario() -> None:
        a, b = ready("a", 2), ready("b", 2)
        bal = Balancer([a, b], affinity_wait_s=5, clock=Clock())
        bal.utilization, bal._samples = 1.0, 500
        for conv in ("c0", "c1"):
            bal.holders.record((conv,), a)
            assert await bal.acquire(affinity=(conv,)) is a
        bal.holders.record(("c2", "c3"), a)
        assert await bal.acquire(affinity=("c2",)) is b  # a is full, b entirely idle: no wait
        waiting = asyncio.create_task(bal.acquire(affinity=("c3",)))
        await asyncio.sleep(0)
        assert not waiting.done() and bal.queued == 1  # b is busy now too: waiting for the holder pays again
        bal.release(a)
        assert await waiting is a

    asyncio.run(scenario())


def test_a_busy_fleet_waits_while_an_idle_backend_expects_its_own_next_turns() -> None:
    """A backend whose last request ended a moment ago is idle only until its conversations' next turns come
    back: a request held elsewhere that moved there would lose its prefix and take their slot (4 x 2 slots,
    bench/prefix_cache_real.py, turns back to back: moves like this lost ~8% of the prompt tokens). Past the
    grace the idle backend is someone's again."""
    async def scenario() -> None:
        a, b = ready("a", 2), ready("b", 2)
        clock = Clock()
        bal = Balancer([a, b], affinity_wait_s=5, clock=clock)
        bal.utilization, bal._samples = 1.0, 500
        bal.holders.record(("b's",), b)
        served = await bal.acquire(affinity=("b's",))
        assert served is b
        for conv in ("c0", "c1"):
            bal.holders.record((conv,), a)
            assert await bal.acquire(affinity=(conv,)) is a
        bal.holders.record(("c2",), a)
        clock.now = 1.0
        bal.release(b)  # b is entirely idle, its conversation's next turn on its way
        waiting = asyncio.create_task(bal.acquire(affinity=("c2",)))
        await asyncio.sleep(0)
        assert not waiting.done() and bal.queued == 1  # waits for a instead of taking b
        assert await bal.acquire(affinity=("b's",)) is b  # b's next turn finds its prefix (and queues behind none)
        bal.release(b)
        clock.now = 1.0 + 0.3  # past the grace: b is idle for real, the waiter takes it at the next look
        bal.wake()
        assert await waiting is b

    asyncio.run(scenario())


def test_a_freed_slot_goes_first_to_the_request_whose_prefix_it_holds() -> None:
    async def scenario() -> None:
        a, b = ready("a", 1), ready("b", 1)
        clock = Clock()
        bal = Balancer([a, b], clock=clock)
        assert {await bal.acquire(), await bal.acquire()} == {a, b}  # the fleet is full
        bal.holders.record(("held by b",), b)
        plain = asyncio.create_task(bal.acquire())
        await asyncio.sleep(0)
        prefixed = asyncio.create_task(bal.acquire(affinity=("held by b",)))
        await asyncio.sleep(0)
        assert bal.queued == 2
        bal.release(b)  # the request that would prefill its prompt there again waits for the next slot
        await asyncio.sleep(0)
        assert prefixed.done() and prefixed.result() is b and not plain.done()
        bal.release(a)
        await asyncio.sleep(0)
        assert plain.result() is a
        # but not past a head of the queue that has waited 2 s: FIFO again (no one starves)
        bal.holders.record(("held by a",), a)
        plain = asyncio.create_task(bal.acquire())
        await asyncio.sleep(0)
        prefixed = asyncio.create_task(bal.acquire(affinity=("held by a",)))
        await asyncio.sleep(0)
        clock.now = 2.0
        bal.release(a)
        await asyncio.sleep(0)
        assert plain.done() and plain.result() is a and not prefixed.done()
        prefixed.cancel()

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


def test_a_reload_of_the_affinity_knobs_reaches_the_policy() -> None:
    """A reload configures the balancer (Gateway.apply_config); the scheduler and the wait rule read them
    at each pick."""

    async def scenario() -> None:
        a, b = ready("a", 4), ready("b", 4)
        bal = Balancer([a, b], affinity_load=1.0)
        a.in_flight = 2
        bal.holders.record(("conv",), a)
        assert await bal.acquire(affinity=("conv",)) is b  # 3 > 1.0 x (2 x 4 / 8 + 1)
        bal.configure(queue_size=256, queue_timeout_s=30.0, affinity_load=2.0, affinity_wait_s=1.0)
        assert bal.tuning.affinity_load == 2.0 and bal.tuning.affinity_wait_s == 1.0
        bal.holders.record(("conv",), a)
        assert await bal.acquire(affinity=("conv",)) is a and bal.affinity_hits == 1

    asyncio.run(scenario())
