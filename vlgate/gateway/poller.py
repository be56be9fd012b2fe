"""Poll each backend's /health and /slots: readiness, loading, slot counts.

In `vlgate serve` the poller owns backend state. In `vlgate up` the launcher owns it, and the
poller only brings a backend the gateway marked suspect/down back once /health passes again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import httpx

from vlgate.backends import Backend, BackendState
from vlgate.gateway.balancer import Balancer

log = logging.getLogger("vlgate.gateway.poller")

_RECOVERABLE = {BackendState.SUSPECT, BackendState.DOWN}


async def fetch_slot_count(client: httpx.AsyncClient, backend: Backend) -> int | None:
    """Slots from /slots (live), else /props total_slots; None when neither answers."""
    headers = backend.auth_headers()
    try:
        r = await client.get(backend.url + "/slots", headers=headers)
        slots = r.json() if r.status_code == 200 else None
        if isinstance(slots, list) and slots:
            return len(slots)
        r = await client.get(backend.url + "/props", headers=headers)
        if r.status_code == 200:
            total = r.json().get("total_slots")
            if isinstance(total, int) and total > 0:
                return total
    except (httpx.HTTPError, ValueError):
        return None
    return None


async def check_backend(client: httpx.AsyncClient, backend: Backend, manage_all: bool) -> None:
    """One health round for one backend."""
    try:
        r = await client.get(backend.url + "/health", headers=backend.auth_headers())
    except httpx.HTTPError as exc:
        if manage_all and backend.state is not BackendState.DOWN:
            backend.set_state(BackendState.DOWN, f"unreachable: {type(exc).__name__}")
        return
    if r.status_code == 200:
        if manage_all or backend.state in _RECOVERABLE:
            slots = None if backend.fixed_slots else await fetch_slot_count(client, backend)
            if slots:
                backend.slots = slots
            if backend.state is not BackendState.READY:
                log.info("backend %s ready (%d slots)", backend.name, backend.slots)
            backend.set_state(BackendState.READY)
        return
    if not manage_all:
        return
    if r.status_code == 503 and "loading" in r.text.lower():
        backend.set_state(BackendState.LOADING, "Loading model")
    else:
        backend.set_state(BackendState.DOWN, f"/health answered {r.status_code}")


class HealthPoller:
    def __init__(self, backends: list[Backend], balancer: Balancer, *, interval_s: float, timeout_s: float,
                 manage_all: bool) -> None:
        self.backends = backends
        self.balancer = balancer
        self.interval_s = interval_s
        self.manage_all = manage_all
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(timeout_s))
        self._tasks: list[asyncio.Task[None]] = []
        self._kick: dict[Backend, asyncio.Event] = {}

    async def check_all(self) -> None:
        await asyncio.gather(*(check_backend(self.client, b, self.manage_all) for b in self.backends))
        self.balancer.wake()

    def start(self) -> None:
        for backend in self.backends:
            self._kick[backend] = asyncio.Event()
            backend.listeners.append(self._on_change)
            self._tasks.append(asyncio.create_task(self._loop(backend), name=f"health:{backend.name}"))

    def _on_change(self, backend: Backend) -> None:
        # a request just failed there: re-check soon rather than at the next period
        if backend.state in _RECOVERABLE and backend in self._kick:
            self._kick[backend].set()

    async def _loop(self, backend: Backend) -> None:
        event = self._kick[backend]
        while True:
            try:
                await check_backend(self.client, backend, self.manage_all)
                self.balancer.wake()
            except Exception:  # never let one odd answer kill the poller
                log.exception("health check of %s failed", backend.name)
            event.clear()
            interval = self.interval_s if backend.state is BackendState.READY else min(self.interval_s, 0.5)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await event.wait()
                # kicked: small pause so a flapping backend is not hammered
                await asyncio.sleep(0.1)

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.client.aclose()
