"""What the operator sees, gathered in one place: timelines, usage per key, backend scrapes and events.

`Gateway.finish` hands every finished request here (one hook for every route, old and new), the
health loop hands every backend round to the scraper, and backend state changes are listened to
for restarts and the last error. The status page, `/metrics` and `vlgate status` read from here.
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from dataclasses import dataclass

import httpx
from prometheus_client import CollectorRegistry

from vlgate.backends import Backend, BackendState
from vlgate.gateway.endpoint.context import RequestContext
from vlgate.gateway.fleet.capacity import SlotReport
from vlgate.gateway.observe.fleetmetrics import FleetCollector, FleetScraper
from vlgate.gateway.observe.timeline import Timelines
from vlgate.gateway.observe.usage import KeyUsage, Tokens

_TROUBLE = {BackendState.SUSPECT, BackendState.DOWN, BackendState.CRASHED, BackendState.FAILED}


@dataclass
class BackendEvents:
    restarts: int = 0
    last_error: str = ""
    last_error_at: float | None = None  # unix time


class Observer:
    def __init__(self, registry: CollectorRegistry, backends: list[Backend], client: httpx.AsyncClient) -> None:
        self.timelines = Timelines()
        self.usage = KeyUsage(registry)
        self.scraper = FleetScraper(client, self.timelines)
        registry.register(FleetCollector(self.scraper, backends))
        self.statuses: Tally[int] = Tally()
        self.events: dict[str, BackendEvents] = {}
        self._watched: set[Backend] = set()
        self.started = time.time()
        for backend in backends:
            self._watch(backend)

    def _watch(self, backend: Backend) -> None:
        if backend not in self._watched:
            self._watched.add(backend)
            self.events.setdefault(backend.name, BackendEvents())
            backend.listeners.append(self._on_state)

    async def after_check(self, backend: Backend, slots: SlotReport | None = None) -> None:
        """After each health round of a backend (one that joined later too): its events, then a scrape."""
        self._watch(backend)
        await self.scraper.scrape(backend, slots)

    def _on_state(self, backend: Backend) -> None:
        events = self.events[backend.name]
        if backend.state is BackendState.RESTARTING:
            events.restarts += 1
        if backend.state in _TROUBLE and backend.reason:
            events.last_error, events.last_error_at = f"{backend.state.value}: {backend.reason}", time.time()

    def finish(self, ctx: RequestContext, status: int, duration_s: float, tokens: Tokens | None) -> None:
        """Account one finished request (every route passes here through `Gateway.finish`) and the tokens
        its backend reported."""
        self.statuses[status] += 1
        self.usage.record(ctx.key, status, tokens, ctx.images)
        # TTFT: a stream's headers come with its first token; a non-stream answer's only at the end
        self.timelines.record(ctx.backend, duration_s, ctx.ttfb if ctx.stream else None,
                              ok=status < 500 and status != 429)
        if tokens is not None and ctx.backend is not None and not self.scraper.has_series(ctx.backend):
            self.timelines.add_tokens(ctx.backend, tokens.completion)

    def close(self) -> None:
        self.scraper.close()
