"""Poll each backend's /health and /slots: readiness, loading, slot counts.

In `vlgate serve` the poller owns backend state. In `vlgate up` the launcher owns it, and the
poller only brings a backend the gateway marked suspect/down back once /health passes again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

import httpx

from vlgate.backends import Backend, BackendState
from vlgate.gateway.fleet.capacity import SlotReport, refresh_slots
from vlgate.gateway.routing.balancer import Balancer

log = logging.getLogger("vlgate.gateway.fleet.poller")

_RECOVERABLE = {BackendState.SUSPECT, BackendState.DOWN}
_SHARED_FOR_S = 30.0  # after seeing other clients' work on a backend, poll it fast this long


async def check_backend(client: httpx.AsyncClient, backend: Backend, manage_all: bool) -> SlotReport | None:
    """One health round for one backend; what its `/slots` said, when it was read."""
    try:
        r = await client.get(backend.url + "/health", headers=backend.auth_headers())
    except httpx.HTTPError as exc:
        if manage_all and backend.state is not BackendState.DOWN:
            backend.set_state(BackendState.DOWN, f"unreachable: {type(exc).__name__}")
        return None
    if r.status_code == 200:
        if backend.state in _RECOVERABLE and time.monotonic() < backend.ejected_until:
            return None  # ejected by gateway/outlier.py: healthy again only once the period is over
        report = None
        if manage_all or backend.state in _RECOVERABLE or backend.state is BackendState.READY:
            report = await refresh_slots(client, backend)
        if manage_all or backend.state in _RECOVERABLE:
            if backend.state is not BackendState.READY:
                log.info("backend %s ready (%d slots)", backend.name, backend.slots)
            backend.set_state(BackendState.READY)
        return report
    if not manage_all:
        return None
    if r.status_code == 503 and "loading" in r.text.lower():
        backend.set_state(BackendState.LOADING, "Loading model")
    else:
        backend.set_state(BackendState.DOWN, f"/health answered {r.status_code}")
    return None


class HealthPoller:
    def __init__(self, backends: list[Backend], balancer: Balancer, *, interval_s: float, timeout_s: float,
                 manage_all: bool, busy_interval_s: float = 0.25) -> None:
        self.backends = backends
        self.balancer = balancer
        self.interval_s = interval_s
        self.busy_interval_s = busy_interval_s
        self.manage_all = manage_all
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(timeout_s))
        self._tasks: dict[Backend, asyncio.Task[None]] = {}
        self._kick: dict[Backend, asyncio.Event] = {}
        self._shared_until: dict[Backend, float] = {}  # recently seen busy with other clients' work
        # run after each health round of a backend, with what its /slots said (the fleet metrics scrape)
        self.after_check: list[Callable[[Backend, SlotReport | None], Awaitable[None]]] = []

    async def check_all(self) -> None:
        await asyncio.gather(*(check_backend(self.client, b, self.manage_all) for b in self.backends))
        self.balancer.wake()

    def configure(self, *, interval_s: float, busy_interval_s: float) -> None:
        """New polling intervals (a config reload), from the next round on."""
        self.interval_s, self.busy_interval_s = interval_s, busy_interval_s

    def start(self) -> None:
        for backend in self.backends:
            self.watch(backend)

    def watch(self, backend: Backend) -> None:
        """Poll a backend (at start, or one that joins later: discovery, reload)."""
        if backend in self._tasks:
            return
        self._kick[backend] = asyncio.Event()
        backend.listeners.append(self._on_change)
        self._tasks[backend] = asyncio.create_task(self._loop(backend), name=f"health:{backend.name}")

    def unwatch(self, backend: Backend) -> None:
        """Stop polling a backend that leaves (it drains; no health round may make it ready again)."""
        task = self._tasks.pop(backend, None)
        if task is not None:
            task.cancel()
        self._kick.pop(backend, None)
        self._shared_until.pop(backend, None)
        with contextlib.suppress(ValueError):
            backend.listeners.remove(self._on_change)

    def _on_change(self, backend: Backend) -> None:
        # a request just failed there: re-check soon rather than at the next period
        if backend.state in _RECOVERABLE and backend in self._kick:
            self._kick[backend].set()

    async def _loop(self, backend: Backend) -> None:
        event = self._kick[backend]
        while True:
            try:
                report = await check_backend(self.client, backend, self.manage_all)
                self.balancer.wake()
                for hook in self.after_check:
                    await hook(backend, report)
            except Exception:  # never let one odd answer kill the poller
                log.exception("health check of %s failed", backend.name)
            event.clear()
            interval = self.interval_s if backend.state is BackendState.READY else min(self.interval_s, 0.5)
            if backend.external_busy:  # shared with other replicas: their load is only known from /slots
                self._shared_until[backend] = time.monotonic() + _SHARED_FOR_S
            if time.monotonic() < self._shared_until.get(backend, 0.0):
                interval = min(interval, self.busy_interval_s)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await event.wait()
                # kicked: small pause so a flapping backend is not hammered
                await asyncio.sleep(0.1)

    async def aclose(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        for task in self._tasks.values():
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.client.aclose()
