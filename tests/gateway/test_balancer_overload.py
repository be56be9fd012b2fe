"""The balancer at and past saturation (bench/fleet_sim.py at 100% and 120% load): a virtual clock, futures
resolved by the balancer itself (its synchronous try_acquire / enqueue / release / expire, as the simulator
drives it)."""

from __future__ import annotations

import asyncio

from vlgate.backends import Backend, BackendState
from vlgate.gateway.routing.balancer import Balancer, _Waiter


def ready(name: str, slots: int) -> Backend:
    b = Backend(url=f"http://{name}", name=name, slots=slots)
    b.set_state(BackendState.READY)
    return b


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_refusals_are_429_or_503_with_retry_after_within_the_queue_bounds() -> None:
    loop = asyncio.new_event_loop()
    clock = Clock()
    a = ready("a", 1)
    bal = Balancer([a], queue_size=1, queue_timeout_s=30, clock=clock)
    assert bal.try_acquire() is a and bal.try_acquire() is None and bal.refusal() is None
    waiter = bal.enqueue(loop.create_future(), None, frozenset())
    full = bal.refusal()
    assert full is not None and full.status == 429 and full.code == "queue_full"
    clock.now = 30
    late = bal.expire(waiter)
    assert late.status == 503 and late.code == "queue_timeout" and bal.queued == 0
    for error in (full, late):
        assert error.headers is not None and 1 <= int(error.headers["Retry-After"]) <= 30
    loop.close()


def test_a_missed_deadline_serves_the_queue_newest_first_until_demand_falls() -> None:
    loop = asyncio.new_event_loop()
    clock = Clock()
    a = ready("a", 1)
    bal = Balancer([a], queue_timeout_s=30, clock=clock)
    assert bal.try_acquire() is a

    def queue() -> tuple[asyncio.Future[Backend], _Waiter]:
        assert bal.try_acquire() is None
        future: asyncio.Future[Backend] = loop.create_future()
        waiter = bal.enqueue(future, None, frozenset())
        clock.now += 1
        return future, waiter

    (first, _), (second, late), (third, _) = queue(), queue(), queue()
    bal.release(a)
    assert first.done() and not second.done() and not third.done()  # arrival order: no deadline missed yet
    clock.now = 31
    bal.expire(late)  # the queue deadline passed: demand is over capacity
    fourth, _ = queue()
    bal.release(a)
    assert fourth.done() and not third.done()  # newest first
    bal.release(a)
    assert third.done() and bal.queued == 0
    # the queue emptied, but demand (smoothed) is still saturated: still newest first
    bal.utilization = 2.0
    fifth, _ = queue()
    sixth, _ = queue()
    bal.release(a)
    assert sixth.done() and not fifth.done()
    bal.release(a)
    assert fifth.done()
    # the queue empties with demand under saturation: arrival order again
    bal.utilization = 0.5
    seventh, _ = queue()
    eighth, _ = queue()
    bal.release(a)
    assert seventh.done() and not eighth.done()
    loop.close()


def test_saturated_a_freed_slot_goes_to_its_prefix_holders_request_longer() -> None:
    """Saturated (demand >= 1.25x the slots) a freed slot goes to a queued request whose prefix it holds
    while the head has waited under 2/3 of the queue deadline, not only 2 s: a cached prefill is capacity."""
    for utilization, expected in ((2.0, "holder's"), (0.5, "head")):
        loop = asyncio.new_event_loop()
        clock = Clock()
        a, b = ready("a", 1), ready("b", 1)
        bal = Balancer([a, b], queue_timeout_s=30, clock=clock)
        bal.holders.record(("x",), b)
        bal.holders.record(("y",), a)
        assert {bal.try_acquire(), bal.try_acquire()} == {a, b}
        head: asyncio.Future[Backend] = loop.create_future()
        bal.enqueue(head, ("x",), frozenset())  # its holder, b, is full
        holders: asyncio.Future[Backend] = loop.create_future()
        bal.enqueue(holders, ("y",), frozenset())
        clock.now = 10  # the head waited 10 s: over 2, under 20
        bal.utilization = utilization
        bal.release(a)
        assert (holders.done(), head.done()) == ((True, False) if expected == "holder's" else (False, True))
        assert (holders if expected == "holder's" else head).result() is a
        loop.close()
