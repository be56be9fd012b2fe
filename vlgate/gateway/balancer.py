"""Pick a backend for each request: the one holding its prefix (bounded load), else most free slots; a FIFO queue.

The gateway is the only client of its backends, so `Backend.in_flight` is exact; a request only
goes to a backend with a free slot, so llama-server never holds more than it has slots. When no
slot is free the request waits in a FIFO queue (size + deadline) instead of piling on.

Affinity (bench/fleet_sim.py measured it): a request's keys (its conversation, then each image) name
the backend that last served them, whose KV cache holds that prefix. The holder gets the request
while its load stays within `affinity_load` x the mean (bounded-load consistent hashing's rule); when
the fleet is busy (no backend has half its slots free), a full holder is waited for up to
`affinity_wait_s`, since a cached prefix saves more prefill than a short wait costs; otherwise the
backend with the most free slots wins.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from vlgate.backends import Backend, BackendState
from vlgate.errors import APIError
from vlgate.gateway.affinity import Affinity

# states from which a backend will soon be ready again: worth queueing for. Not DOWN (connection refused)
# nor FAILED (parked): when every backend is one of those, requests fail fast with 503 + Retry-After
_HOPEFUL = {BackendState.STARTING, BackendState.LOADING, BackendState.RESTARTING, BackendState.SUSPECT,
            BackendState.CRASHED}


@dataclass(eq=False)
class _Waiter:
    future: asyncio.Future[Backend]
    affinity: Affinity | None
    exclude: frozenset[Backend]
    enqueued: float = field(default_factory=time.monotonic)


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
    ) -> None:
        self.backends = backends
        self.queue_size = queue_size
        self.queue_timeout_s = queue_timeout_s
        self.affinity_load = affinity_load
        self.affinity_wait_s = affinity_wait_s
        self.draining = False
        self._waiters: deque[_Waiter] = deque()
        self._affinity: OrderedDict[object, Backend] = OrderedDict()
        self._affinity_entries = affinity_entries
        self._rr = itertools.count()
        self.affinity_hits = 0
        for backend in backends:
            self.attach(backend)

    def attach(self, backend: Backend) -> None:
        """Follow a backend's state (also one that joins later: discovery, reload)."""
        backend.listeners.append(self._on_state_change)

    # -- reading -------------------------------------------------------------------------------
    @property
    def queued(self) -> int:
        return len(self._waiters)

    def in_flight(self) -> int:
        return sum(b.in_flight for b in self.backends)

    def ready_backends(self) -> list[Backend]:
        return [b for b in self.backends if b.available]

    def not_ready_reason(self) -> str:
        if self.draining:
            return "gateway is draining (shutting down)"
        if not self.backends:
            return "no backends configured"
        return "; ".join(f"{b.name}: {b.state.value}{' (' + b.reason + ')' if b.reason else ''}" for b in self.backends)

    # -- choosing ------------------------------------------------------------------------------
    def _pick(self, affinity: Affinity | None, exclude: frozenset[Backend], waited_s: float = 0.0) -> Backend | None:
        """The backend for a request, or None: wait (no free slot, or its prefix holder is worth waiting for)."""
        best: Backend | None = None
        best_free = 0
        candidates = self.backends
        n = len(candidates)
        start = next(self._rr) % n if n > 1 else 0
        load = 0
        ready = 0
        for i in range(n):
            b = candidates[(start + i) % n]
            if b.state is not BackendState.READY or b in exclude:
                continue
            free = b.free_slots  # other replicas' work on it counts too
            load += b.slots - free
            ready += 1
            if free > best_free:
                best, best_free = b, free
        holder = self._holder(affinity, exclude)
        if holder is not None and holder is not best:
            # bounded load: the holder may run ahead of the mean, but not by more than affinity_load x
            bound = self.affinity_load * (load / ready + 1)
            busy = holder.slots - holder.free_slots
            if holder.free_slots > 0 and busy + 1 <= bound:
                self.affinity_hits += 1
                return holder
            # worth waiting for when the fleet is busy anyway (no backend has half its slots free: elsewhere
            # the prompt would be prefilled again behind others' work); with room elsewhere, go there
            if waited_s < self.affinity_wait_s and best is not None and 2 * best_free <= best.slots \
                    and busy + 1 <= bound:
                return None
        return best

    def _holder(self, affinity: Affinity | None, exclude: frozenset[Backend]) -> Backend | None:
        """The ready backend that last served one of the request's keys (most specific key first)."""
        for key in affinity or ():
            b = self._affinity.get(key)
            if b is not None and b.state is BackendState.READY and b not in exclude:
                return b
        return None

    def _take(self, backend: Backend, affinity: Affinity | None) -> Backend:
        backend.in_flight += 1
        backend.served += 1
        for key in affinity or ():
            self._affinity[key] = backend
            self._affinity.move_to_end(key)
        while len(self._affinity) > self._affinity_entries:
            self._affinity.popitem(last=False)
        return backend

    def _retry_after(self) -> str:
        return str(max(1, math.ceil(min(self.queue_timeout_s, 5.0))))

    async def acquire(self, affinity: Affinity | None = None, exclude: frozenset[Backend] = frozenset()) -> Backend:
        """A backend with a slot reserved for this request; release() it when done.

        While draining, new requests are refused at the door (gateway/drain.py): one that gets here was
        admitted before, and is served."""
        if not self._waiters:
            backend = self._pick(affinity, exclude)
            if backend is not None:
                return self._take(backend, affinity)
        if not self._can_serve(exclude):
            raise self._no_backend()
        if len(self._waiters) >= self.queue_size:
            raise APIError(429, f"All {sum(b.slots for b in self.ready_backends())} slots are busy and the queue "
                           f"({self.queue_size}) is full; retry later.",
                           code="queue_full", headers={"Retry-After": self._retry_after()})
        loop = asyncio.get_running_loop()
        waiter = _Waiter(loop.create_future(), affinity, exclude)
        self._waiters.append(waiter)
        if affinity is not None:  # it may be waiting for its prefix holder: look again once that wait is over
            loop.call_later(self.affinity_wait_s + 0.01, self.wake)
        try:
            async with asyncio.timeout(self.queue_timeout_s):
                return await waiter.future
        except TimeoutError:
            self._abandon(waiter)
            raise APIError(503, f"No slot became free within {self.queue_timeout_s:g}s "
                           f"(backends: {self.not_ready_reason()}).",
                           code="queue_timeout", headers={"Retry-After": self._retry_after()}) from None
        except BaseException:
            self._abandon(waiter)
            raise

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
        if self._waiters:
            self._dispatch()

    def _dispatch(self) -> None:
        """Hand free slots to waiters in FIFO order (skipping those whose exclusions rule a slot out)."""
        for waiter in list(self._waiters):
            if waiter.future.done():
                self._waiters.remove(waiter)
                continue
            backend = self._pick(waiter.affinity, waiter.exclude, time.monotonic() - waiter.enqueued)
            if backend is None:
                if not any(b.state is BackendState.READY and b.free_slots > 0 for b in self.backends):
                    return
                continue
            self._waiters.remove(waiter)
            waiter.future.set_result(self._take(backend, waiter.affinity))

    def _on_state_change(self, backend: Backend) -> None:
        if backend.state is not BackendState.READY:
            for key in [k for k, b in self._affinity.items() if b is backend]:
                del self._affinity[key]
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
