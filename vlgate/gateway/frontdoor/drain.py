"""A drain load balancers understand: on SIGTERM the gateway says "not ready" while it still listens.

Closing the listener at once would turn the seconds before a balancer notices (a Kubernetes
endpoint update, an L4 health check) into "connection refused". Instead, on SIGTERM:
`/ready` answers 503 at once and new requests on every route that declares `drains` get a 503
`draining` with `Retry-After` (the endpoint applies it, `endpoint/endpoint.py`; admitted ones go on),
while the listener stays open for at least `gateway.drain_delay_s` and as long as requests and streams
are in flight (up to `gateway.drain_grace_s`); only then does uvicorn close the listener. SIGINT
(Ctrl-C: nobody's balancer is watching) skips the delay; a second signal closes at once.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from typing import Any, Protocol

import uvicorn

from vlgate.config import Config
from vlgate.gateway.routing.balancer import Balancer


class Gateway(Protocol):
    """What a drain needs of the gateway (gateway/gateway.py)."""

    config: Config
    balancer: Balancer
    admitted: int  # requests of draining routes in progress (the endpoint counts them)

    def start_draining(self) -> None: ...

log = logging.getLogger("vlgate.gateway.frontdoor.drain")

_TICK_S = 0.05


def busy(gw: Gateway) -> int:
    """API requests admitted and not finished (streams included): what a drain waits for."""
    return gw.admitted


async def wait_drained(gw: Gateway, delay_s: float, grace_s: float) -> float:
    """Until `delay_s` has passed and nothing is in flight, or `max(delay_s, grace_s)`; returns seconds waited."""
    started = time.monotonic()
    while True:
        waited = time.monotonic() - started
        if waited >= max(delay_s, grace_s) or (waited >= delay_s and busy(gw) == 0):
            return waited
        await asyncio.sleep(_TICK_S)


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, gateway: Gateway) -> None:
        super().__init__(config)
        self.gateway = gateway
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining = False
        self._task: asyncio.Task[None] | None = None

    async def serve(self, sockets: Any = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: Any) -> None:
        if not self._draining and self._loop is not None:
            self._draining = True
            self.gateway.start_draining()  # /ready 503 from this moment
            self._loop.call_soon_threadsafe(self._start_drain, sig)
            return
        # a second signal (or one before serving started): close now, in-flight work gets a second
        self.config.timeout_graceful_shutdown = 1
        self._close(sig)

    def _close(self, sig: int) -> None:
        super().handle_exit(sig, None)
        # uvicorn re-raises the signal after shutdown; a finished drain is a clean exit (0), and the
        # launcher still has backends to stop after serve() returns
        self._captured_signals.clear()

    def _start_drain(self, sig: int) -> None:
        self._task = asyncio.get_running_loop().create_task(self._drain(sig))

    async def _drain(self, sig: int) -> None:
        g = self.gateway.config.gateway  # the running config (a reload may have changed it)
        delay = 0.0 if sig == signal.SIGINT else g.drain_delay_s
        left = 0
        try:
            log.info("draining: /ready 503 now; closing after %gs at least, up to %gs while %d request(s) run",
                     delay, max(delay, g.drain_grace_s), busy(self.gateway))
            waited = await wait_drained(self.gateway, delay, g.drain_grace_s)
            left = busy(self.gateway)
            log.info("drained after %.2fs (%d request(s) still running); closing the listener", waited, left)
        finally:
            # uvicorn waits this long for connections still open, then cancels them
            self.config.timeout_graceful_shutdown = 1 if left else 5
            self._close(sig)
