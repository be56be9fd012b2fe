"""The wedged-generation watchdog: llama-server can answer `/health` 200 while a slot makes no progress
(llama.cpp #27388), and `/slots` itself may hang. Neither shows in a health check.

Every `stall_s / 4` the watchdog reads each ready backend's `/slots`. A slot that is processing with the
same task, decoded tokens and processed prompt tokens for `stall_s` is wedged; so is a backend whose
`/slots` times out `slots_timeouts` times in a row. A wedged backend is reported (log, its `/ready`
reason, `vlgate_wedged_total`) and then restarted by the launcher under `vlgate up` (it sets
`Backend.restart`), or ejected under `vlgate serve` for as long as it stays wedged: each round re-reads its
`/slots`, and the ejection goes on while the stuck slot shows the same progress (or `/slots` still hangs).
A fixed ejection would let a backend still wedged back into rotation, where new requests stick too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import httpx
from prometheus_client import CollectorRegistry, Counter

from vlgate.backends import Backend, BackendState
from vlgate.config import WatchdogConfig

log = logging.getLogger("vlgate.gateway.fleet.watchdog")

Progress = tuple[object, object, object]  # (id_task, n_decoded, n_prompt_tokens_processed)


def slot_progress(slot: dict[str, Any]) -> Progress:
    decoded = None
    next_token = slot.get("next_token")
    if isinstance(next_token, list) and next_token and isinstance(next_token[0], dict):
        decoded = next_token[0].get("n_decoded")
    return slot.get("id_task"), decoded, slot.get("n_prompt_tokens_processed")


class SlotWatchdog:
    def __init__(self, backends: Callable[[], list[Backend]], cfg: WatchdogConfig, registry: CollectorRegistry,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.backends = backends
        self.cfg = cfg
        self.clock = clock
        self.wedged = Counter("vlgate_wedged", "Backends found wedged (a slot without progress, or /slots hanging)",
                              ["backend"], registry=registry)
        self._since: dict[tuple[str, object], tuple[Progress, float]] = {}  # (backend, slot id) -> progress, since
        self._timeouts: dict[str, int] = {}
        # ejected as wedged (serve): backend -> its stuck slots' (id, progress); empty: /slots hung
        self._held: dict[str, set[tuple[object, Progress]]] = {}
        self._task: asyncio.Task[None] | None = None

    def configure(self, cfg: WatchdogConfig) -> None:
        """New stall window and /slots timeouts (a config reload), from the next round on."""
        self.cfg = cfg

    def observe(self, backend: Backend, slots: Any) -> str | None:
        """Record a `/slots` answer; the reason when a slot has made no progress for `stall_s`."""
        self._timeouts[backend.name] = 0
        if not isinstance(slots, list):
            return None
        now = self.clock()
        seen = set()
        reason = None
        for slot in slots:
            if not isinstance(slot, dict):
                continue
            key = (backend.name, slot.get("id"))
            if slot.get("is_processing") is not True:
                self._since.pop(key, None)
                continue
            seen.add(key)
            progress = slot_progress(slot)
            last = self._since.get(key)
            if last is None or last[0] != progress:
                self._since[key] = (progress, now)
            elif now - last[1] >= self.cfg.stall_s:
                reason = (f"wedged: slot {slot.get('id')} processing with no progress for {now - last[1]:.0f}s "
                          f"(task {progress[0]}, {progress[1]} tokens decoded)")
        for key in [k for k in self._since if k[0] == backend.name and k not in seen]:
            del self._since[key]
        return reason

    def timed_out(self, backend: Backend) -> str | None:
        n = self._timeouts.get(backend.name, 0) + 1
        self._timeouts[backend.name] = n
        if n >= self.cfg.slots_timeouts:
            return f"wedged: /slots did not answer within {self.cfg.slots_timeout_s:g}s, {n} times in a row"
        return None

    def act(self, backend: Backend, reason: str) -> None:
        self.wedged.labels(backend.name).inc()
        now = self.clock()
        stuck = {(key[1], since[0]) for key, since in self._since.items()
                 if key[0] == backend.name and now - since[1] >= self.cfg.stall_s}
        for key in [k for k in self._since if k[0] == backend.name]:
            del self._since[key]
        self._timeouts[backend.name] = 0
        if backend.restart is not None:
            log.error("backend %s %s: restarting it", backend.name, reason)
            backend.restart(reason)
        else:
            log.error("backend %s %s: ejected for %gs, and on while it stays wedged", backend.name, reason,
                      self.cfg.stall_s)
            self._held[backend.name] = stuck
            backend.ejected_until = now + self.cfg.stall_s
            backend.mark_failed(BackendState.SUSPECT, reason)

    async def recheck(self, client: httpx.AsyncClient, backend: Backend) -> None:
        """An ejected wedged backend: keep it out while the stuck slot has not moved (or /slots hangs);
        once it moves, end the ejection so the next health poll brings it back."""
        stuck = self._held[backend.name]
        try:
            r = await client.get(backend.url + "/slots", headers=backend.auth_headers(),
                                 timeout=self.cfg.slots_timeout_s)
            slots = r.json() if r.status_code == 200 else None
        except httpx.TimeoutException:
            still = True
        except (httpx.HTTPError, ValueError):
            still = False  # down or odd: the health poller's business from here
        else:
            still = isinstance(slots, list) and any(
                (s.get("id"), slot_progress(s)) in stuck for s in slots
                if isinstance(s, dict) and s.get("is_processing") is True)
        if still:
            backend.ejected_until = max(backend.ejected_until, self.clock() + self.cfg.stall_s)
            return
        del self._held[backend.name]
        backend.ejected_until = min(backend.ejected_until, self.clock())
        log.info("backend %s is no longer wedged: back in rotation once /health passes", backend.name)

    async def check(self, client: httpx.AsyncClient, backend: Backend) -> None:
        try:
            r = await client.get(backend.url + "/slots", headers=backend.auth_headers(),
                                 timeout=self.cfg.slots_timeout_s)
            slots = r.json() if r.status_code == 200 else None
        except httpx.TimeoutException:
            reason = self.timed_out(backend)
        except (httpx.HTTPError, ValueError):
            return  # down or odd: the health poller's business
        else:
            reason = self.observe(backend, slots)
        if reason is not None and backend.state is BackendState.READY:
            self.act(backend, reason)

    def start(self, client: httpx.AsyncClient) -> None:
        self._task = asyncio.create_task(self._loop(client), name="watchdog")

    async def _loop(self, client: httpx.AsyncClient) -> None:
        interval = max(0.2, self.cfg.stall_s / 4)
        while True:
            await asyncio.sleep(interval)
            backends = self.backends()
            ready = [b for b in backends if b.state is BackendState.READY]
            for name in set(self._held) - {b.name for b in backends if b.state is not BackendState.READY}:
                del self._held[name]  # back in rotation some other way, or gone
            held = [b for b in backends if b.name in self._held]
            try:
                await asyncio.gather(*(self.check(client, b) for b in ready),
                                     *(self.recheck(client, b) for b in held))
            except Exception:  # never let one odd answer stop the watchdog
                log.exception("watchdog round failed")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
