"""Backends joining and leaving a running gateway (DNS discovery, config reload).

A backend that joins is polled like any other and takes work after its first healthy check. One that
leaves drains: no new work, its in-flight requests and streams finish, then it is dropped. Each
source (the static list, one DNS name) owns a group, so one source never retires another's backends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from vlgate.backends import Backend, BackendState
from vlgate.config import BackendConfig
from vlgate.gateway.fleet.poller import HealthPoller
from vlgate.gateway.routing.balancer import Balancer

log = logging.getLogger("vlgate.gateway.fleet.membership")

STATIC = "static"  # the group of backends listed by url


def backend_from(entry: BackendConfig, *, url: str, name: str, default_slots: int) -> Backend:
    return Backend(url=url, name=name, api_key=entry.api_key, slots=entry.slots or default_slots,
                   fixed_slots=entry.slots is not None)


def static_backends(entries: list[BackendConfig], default_slots: int) -> list[Backend]:
    """The url entries of the config (dns entries are resolved by discovery)."""
    return [backend_from(e, url=e.url, name=e.name or f"backend-{i}", default_slots=default_slots)
            for i, e in enumerate(entries) if e.url is not None]


class Membership:
    def __init__(self, backends: list[Backend], balancer: Balancer, poller: HealthPoller,
                 on_join: Callable[[Backend], None]) -> None:
        self.backends = backends  # the gateway's own list: balancer, poller and metrics read it
        self.balancer = balancer
        self.poller = poller
        self.on_join = on_join
        self.group: dict[Backend, str] = {b: STATIC for b in backends}
        self._draining: dict[Backend, asyncio.Task[None]] = {}

    def members(self, group: str) -> list[Backend]:
        """The group's backends that are not leaving."""
        return [b for b, g in self.group.items() if g == group and b not in self._draining]

    def sync(self, group: str, wanted: list[Backend]) -> tuple[list[str], list[str]]:
        """Make the group hold exactly `wanted` (matched by URL); returns the names added and removed."""
        current = {b.url: b for b in self.members(group)}
        wanted_urls = {b.url for b in wanted}
        added: list[str] = []
        for new in wanted:
            old = current.get(new.url)
            if old is not None:  # still there: take changed settings, keep its state and counters
                old.api_key, old.fixed_slots = new.api_key, new.fixed_slots
                if new.fixed_slots:
                    old.slots = new.slots
                continue
            self._join(group, new)
            added.append(new.name)
        gone = [b for url, b in current.items() if url not in wanted_urls]
        for b in gone:
            self.leave(b, f"no longer in {group}")
        return added, [b.name for b in gone]

    def _join(self, group: str, backend: Backend) -> None:
        back = next((b for b in self._draining if b.url == backend.url and self.group.get(b) == group), None)
        if back is not None:  # left a moment ago and is back: stop its drain, poll it again
            self._draining.pop(back).cancel()
            back.set_state(BackendState.STARTING, "rejoined")
            self.poller.watch(back)
            log.info("backend %s (%s) rejoins", back.name, back.url)
            return
        self.group[backend] = group
        self.backends.append(backend)
        self.balancer.attach(backend)
        backend.listeners.append(self.on_join)
        self.poller.watch(backend)  # takes work after its first healthy check
        log.info("backend %s (%s) joins", backend.name, backend.url)

    def leave(self, backend: Backend, reason: str) -> None:
        """No new work; drop the backend once its in-flight requests are done."""
        if backend in self._draining:
            return
        self.poller.unwatch(backend)
        backend.set_state(BackendState.DRAINING, reason)
        log.info("backend %s (%s) drains: %s (%d in flight)", backend.name, backend.url, reason, backend.in_flight)
        self._draining[backend] = asyncio.get_running_loop().create_task(self._drop_when_idle(backend))

    async def _drop_when_idle(self, backend: Backend) -> None:
        while backend.in_flight > 0:
            await asyncio.sleep(0.05)
        self._draining.pop(backend, None)
        self.group.pop(backend, None)
        if backend in self.backends:
            self.backends.remove(backend)
        backend.set_state(BackendState.STOPPED, backend.reason)
        log.info("backend %s (%s) left", backend.name, backend.url)

    async def aclose(self) -> None:
        for task in self._draining.values():
            task.cancel()
        self._draining.clear()
