"""The balancer: reserves a slot for each request on the backend its scheduler picks, else queues it.

The gateway is the only client of its backends, so `Backend.in_flight` is exact; a request only
goes to a backend with a free slot, so llama-server never holds more than it has slots. When no
slot is free the request waits in a bounded queue (size: 429, deadline: 503, both with Retry-After)
instead of piling on: in arrival order, but newest first once a deadline was missed, until the queue
empties with demand under saturation (adaptive LIFO: in an overload, arrival order makes every request
wait out most of the deadline; bench/fleet_sim.py at 120% load).

Which backend is policy, and lives elsewhere: the scheduler (routing/scheduler.py) runs a profile's
filters, scorers and picker (routing/plugins/); by default the prefix holder within bounded load,
else the most free slots. This module owns what happens around a pick: reserving the slot, the
prefix-holder table, the queue and its wakeups, and the decision to wait for a full prefix holder
(routing/waiting.py; only while the fleet is busy). A freed slot goes first to a queued request
whose prefix it holds (while the queue's head has waited under 2 s, or, on a saturated fleet, under
2/3 of the deadline: no one starves).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from vlgate.backends import Backend, BackendState
from vlgate.errors import APIError
from vlgate.gateway.routing.affinity import Affinity
from vlgate.gateway.routing.holders import HolderTable
from vlgate.gateway.routing.plugins.profile import DEFAULT, ProfileSpec
from vlgate.gateway.routing.scheduler import make_scheduler
from vlgate.gateway.routing.tuning import Tuning
from vlgate.gateway.routing.waiting import waits_for_holder

_UTILIZATION_WEIGHT = 1 / 500  # per arriving request: about the last 500 requests
# freed slots go to the requests whose prefix they hold first, while the queue's head has waited less than
# this (unbounded, the others starve: 90% load's p99 went from 6.6 to 11.4 s in bench/fleet_sim.py)
_HOLDER_FIRST_S = 2.0
# ...or, while the fleet is saturated (smoothed demand, running + queued, at least this x the slots), less
# than this share of the queue deadline: there every prefill a cached prefix saves is capacity the queue
# needs, and the head still starts before its deadline (bench/fleet_sim.py at 100% load, seeds 1-5: mean
# time to first token 6.3 -> 4.0 s, prefix-cache hits 62 -> 74%, no deadline missed where seed 3 missed 27;
# the price, at 90% load: mean 1.42 -> 1.31 s but p99 9.4 -> 11.4 s)
_SATURATED = 1.25
_SATURATED_HOLDER_FIRST = 2 / 3

# states from which a backend will soon be ready again: worth queueing for. Not DOWN (connection refused)
# nor FAILED (parked): when every backend is one of those, requests fail fast with 503 + Retry-After
_HOPEFUL = {BackendState.STARTING, BackendState.LOADING, BackendState.RESTARTING, BackendState.SUSPECT,
            BackendState.CRASHED}


@dataclass(eq=False)
class _Waiter:
    future: asyncio.Future[Backend]
    affinity: Affinity | None
    exclude: frozenset[Backend]
    enqueued: float


class Balancer:
    def __init__(
        self,
        backends: list[Backend],
        *,
        queue_size: int = 256,
        queue_timeout_s: float = 30.0,
        affinity_load: float = 1.5,
        affinity_wait_s: float = 5.0,
        affinity_entries: int = 16384,
        clock: Callable[[], float] = time.monotonic,
        profile: ProfileSpec = DEFAULT,
    ) -> None:
        self.backends = backends
        self.queue_size = queue_size
        self.queue_timeout_s = queue_timeout_s
        self.tuning = Tuning(affinity_load, affinity_wait_s)
        self.draining = False
        self._waiters: deque[_Waiter] = deque()
        self.holders = HolderTable(affinity_entries)
        self.scheduler = make_scheduler(profile, self.tuning, self.holders)
        self.affinity_hits = 0
        self._clock = clock  # bench/fleet_sim.py runs the balancer in virtual time
        self.utilization = 0.0  # smoothed (running + queued) / ready slots, as arrivals find it
        self._samples = 0
        self._capacity = 0
        self._own_in_flight = 0
        self._overloaded = False  # a queue deadline was missed, and since then demand stayed saturated (expire())
        self._idle_since: dict[Backend, float] = {}  # when each backend's last request (of ours) ended
        for backend in backends:
            self.attach(backend)

    def attach(self, backend: Backend) -> None:
        """Follow a backend's state (also one that joins later: discovery, reload)."""
        backend.listeners.append(self._on_state_change)

    def configure(self, *, queue_size: int, queue_timeout_s: float, affinity_load: float, affinity_wait_s: float,
                  ) -> None:
        """New queue bounds and affinity knobs (a config reload); waiting requests keep their places."""
        self.queue_size, self.queue_timeout_s = queue_size, queue_timeout_s
        self.tuning.affinity_load, self.tuning.affinity_wait_s = affinity_load, affinity_wait_s

    # -- reading -------------------------------------------------------------------------------
    @property
    def queued(self) -> int:
        return len(self._waiters)

    def in_flight(self) -> int:
        return sum(b.in_flight for b in self.backends)

    def ready_backends(self) -> list[Backend]:
        return [b for b in self.backends if b.available]

    def least_loaded(self, exclude: frozenset[Backend] = frozenset()) -> Backend:
        """A backend for work that takes no slot (tokenizing, templates): the available one with the fewest
        requests in flight; 503 when none is available."""
        ready = [b for b in self.backends if b.available and b not in exclude] or self.ready_backends()
        if not ready:
            raise self._no_backend()
        return min(ready, key=lambda b: b.in_flight)

    def not_ready_reason(self) -> str:
        if self.draining:
            return "gateway is draining (shutting down)"
        if not self.backends:
            return "no backends configured"
        return "; ".join(f"{b.name}: {b.state.value}{' (' + b.reason + ')' if b.reason else ''}" for b in self.backends)

    # -- choosing ------------------------------------------------------------------------------
    def _pick(self, affinity: Affinity | None, exclude: frozenset[Backend], waited_s: float | None = None,
              ahead: dict[Backend, int] | None = None) -> Backend | None:
        """The scheduler's backend for a request, or None: wait (no free slot, or its full prefix holder
        is worth waiting for: routing/waiting.py, whose `waited_s` and `ahead` these are)."""
        pick = self.scheduler.pick(self.backends, affinity, exclude)
        self._capacity = pick.capacity
        if pick.affinity_hit:
            self.affinity_hits += 1
        if pick.backend is None or waits_for_holder(pick, self.tuning, self.utilization, waited_s, ahead,
                                                    self._idle_s):
            return None
        return pick.backend

    def _idle_s(self, backend: Backend) -> float:
        """How long `backend` has had none of our requests (inf: none since it became ready)."""
        return self._clock() - self._idle_since.get(backend, -math.inf) if backend.in_flight <= 0 else 0.0

    def _take(self, backend: Backend, affinity: Affinity | None) -> Backend:
        backend.in_flight += 1
        backend.served += 1
        self._own_in_flight += 1
        self.holders.record(affinity, backend)
        return backend

    def _retry_after(self) -> str:
        return str(max(1, math.ceil(min(self.queue_timeout_s, 5.0))))

    def try_acquire(self, affinity: Affinity | None = None,
                    exclude: frozenset[Backend] = frozenset()) -> Backend | None:
        """A backend at once (its slot reserved), or None: the request must queue (never ahead of waiters)."""
        if self._capacity:  # sampled at arrivals: the time average (Poisson arrivals see time averages)
            n = self._samples = self._samples + 1  # a plain mean at first, then exponential
            demand = (self._own_in_flight + len(self._waiters)) / self._capacity  # our own: other replicas' not
            self.utilization += (demand - self.utilization) * (_UTILIZATION_WEIGHT if n > 500 else 1 / n)
        if self._waiters:
            return None
        backend = self._pick(affinity, exclude)
        return None if backend is None else self._take(backend, affinity)

    def enqueue(self, future: asyncio.Future[Backend], affinity: Affinity | None,
                exclude: frozenset[Backend]) -> _Waiter:
        """Queue a request; it may get a slot the waiters ahead of it pass over (they wait for their prefix holder)."""
        waiter = _Waiter(future, affinity, exclude, self._clock())
        if not self._waiters and self.utilization < _SATURATED:  # the overload is over: arrival order again
            self._overloaded = False
        self._waiters.append(waiter)
        if len(self._waiters) > 1 and self._any_free_slot():
            self._dispatch()
        return waiter

    async def acquire(self, affinity: Affinity | None = None, exclude: frozenset[Backend] = frozenset()) -> Backend:
        """A backend with a slot reserved for this request; release() it when done.

        While draining, new requests are refused at the door (gateway/drain.py): one that gets here was
        admitted before, and is served."""
        backend = self.try_acquire(affinity, exclude)
        if backend is not None:
            return backend
        refused = self.refusal(exclude)
        if refused is not None:
            raise refused
        loop = asyncio.get_running_loop()
        waiter = self.enqueue(loop.create_future(), affinity, exclude)
        if affinity is not None:  # it may be waiting for its prefix holder: look again once that wait is over
            loop.call_later(self.tuning.affinity_wait_s + 0.01, self.wake)
        try:
            async with asyncio.timeout(self.queue_timeout_s):
                return await waiter.future
        except TimeoutError:
            raise self.expire(waiter) from None
        except BaseException:
            self._abandon(waiter)
            raise

    def refusal(self, exclude: frozenset[Backend] = frozenset()) -> APIError | None:
        """Why a request that found no slot may not queue (503: no backend can serve; 429: the queue is
        full), or None: it queues. Both carry Retry-After (bench/fleet_sim.py reads them too)."""
        if not self._can_serve(exclude):
            return self._no_backend()
        if len(self._waiters) >= self.queue_size:
            return APIError(429, f"All {sum(b.slots for b in self.ready_backends())} slots are busy and the queue "
                            f"({self.queue_size}) is full; retry later.",
                            code="queue_full", headers={"Retry-After": self._retry_after()})
        return None

    def expire(self, waiter: _Waiter) -> APIError:
        """A waiter reached the queue deadline: out of the queue, and its 503 + Retry-After.

        A missed deadline means demand is over capacity: from now until the queue empties with demand under
        saturation (enqueue()), the queue serves newest first (adaptive LIFO). In arrival order every request
        would wait out most of the deadline and miss any first-token objective; newest first, all but the
        surplus start soon and the surplus ages out at the deadline (bench/fleet_sim.py at 120% load, 8 seeds:
        answers within 5 s 0.05 -> 3.3 per second; the Kubernetes-style router that sheds: 1.8)."""
        self._abandon(waiter)
        self._overloaded = True
        return APIError(503, f"No slot became free within {self.queue_timeout_s:g}s "
                        f"(backends: {self.not_ready_reason()}).",
                        code="queue_timeout", headers={"Retry-After": self._retry_after()})

    def _can_serve(self, exclude: frozenset[Backend] = frozenset()) -> bool:
        """Some backend is ready, or will be soon (a slot can become free)."""
        return any(b.state is BackendState.READY or b.state in _HOPEFUL for b in self.backends if b not in exclude)

    def _no_backend(self) -> APIError:
        return APIError(503, f"No backend can take work: {self.not_ready_reason()}",
                        code="no_backend", headers={"Retry-After": self._retry_after()})

    def _abandon(self, waiter: _Waiter) -> None:
        """A waiter that gave up; if a slot reached it at the same moment, give the slot back."""
        if waiter.future.done() and not waiter.future.cancelled():
            self.release(waiter.future.result())
            return
        waiter.future.cancel()
        try:
            self._waiters.remove(waiter)
        except ValueError:
            pass

    def release(self, backend: Backend) -> None:
        backend.in_flight -= 1
        self._own_in_flight -= 1
        if backend.in_flight <= 0:
            self._idle_since[backend] = self._clock()
        if self._waiters:
            self._dispatch()

    def _dispatch(self) -> None:
        """Hand free slots to waiters: first, in FIFO order, those whose prefix holder has one (while the
        head is young); then the rest in FIFO order (skipping those whose exclusions rule a slot out, and
        those that wait for their holder). A slot goes to a request whose prefix it holds before one that
        would prefill it again. Overloaded (expire()), both passes run newest first, the first only over
        the requests queued less than `affinity_wait_s`, and no one waits for a full holder."""
        if not self._waiters:
            return
        now = self._clock()
        newest_first = self._overloaded
        young = self.queue_timeout_s * _SATURATED_HOLDER_FIRST if self.utilization >= _SATURATED else _HOLDER_FIRST_S
        holders_first = newest_first or now - self._waiters[0].enqueued < young
        if holders_first and any(self._holder_free(w) for w in self._waiters):
            self._serve(now, holders_only=True, newest_first=newest_first)
        self._serve(now, holders_only=False, newest_first=newest_first)

    def _any_free_slot(self) -> bool:
        return any(b.state is BackendState.READY and b.free_slots > 0 for b in self.backends)

    def _holder_free(self, waiter: _Waiter) -> bool:
        """Whether the waiter's prefix holder has a free slot."""
        holder = self.holders.holder(waiter.affinity, waiter.exclude) if waiter.affinity else None
        return holder is not None and holder.free_slots > 0

    def _serve(self, now: float, holders_only: bool, newest_first: bool = False) -> None:
        """One pass over the queue (FIFO, or newest first while overloaded); `ahead` counts who already
        waits for each holder (its line)."""
        ahead: dict[Backend, int] = {}
        for waiter in (list(reversed(self._waiters)) if newest_first else list(self._waiters)):
            if waiter.future.done():
                self._waiters.remove(waiter)
                continue
            if holders_only:
                if newest_first and now - waiter.enqueued >= self.tuning.affinity_wait_s:
                    break  # overloaded, an older request's prefix is not worth a fresher one's wait
                if not self._holder_free(waiter):
                    continue
            # overloaded, no one waits for a full prefix holder: the next newest has no time to lose either
            backend = self._pick(waiter.affinity, waiter.exclude, math.inf if newest_first else now - waiter.enqueued,
                                 ahead)
            if backend is None:
                if not self._any_free_slot():
                    return
                continue
            self._waiters.remove(waiter)
            waiter.future.set_result(self._take(backend, waiter.affinity))

    def _on_state_change(self, backend: Backend) -> None:
        if backend.state is not BackendState.READY:
            self.holders.forget(backend)
            self._idle_since.pop(backend, None)  # back with an empty cache: nothing comes back to it
        if self._waiters:
            if self._can_serve():
                self._dispatch()
            else:  # nothing can free a slot any more: fail the queue now, not at its deadline
                while self._waiters:
                    waiter = self._waiters.popleft()
                    if not waiter.future.done():
                        waiter.future.set_exception(self._no_backend())

    def wake(self) -> None:
        """Slots or states changed outside a release (health poll): serve waiters."""
        if self._waiters:
            self._dispatch()
