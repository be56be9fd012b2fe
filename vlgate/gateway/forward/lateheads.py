"""Response heads that are overdue, failed by one sweep instead of a timer per request (see LateHeads)."""

from __future__ import annotations

import asyncio
from typing import Protocol


class Late(Protocol):
    def headers_late(self) -> None:
        """Fail the wait for the response head with TimeoutError (a no-op when it is in)."""


class LateHeads:
    """Answers whose headers are overdue (`Pool.post`'s `headers_due`), found by one sweep every SWEEP_S, not by
    `asyncio.timeout` around every request: that cost ~2% of the gateway's CPU per non-stream chat at c=16
    (py-spy: Timeout.__aenter__, reschedule, current_task), a dict entry in and out costs next to nothing. A
    late answer fails with TimeoutError up to SWEEP_S after its due time. One per `Client` (one event loop)."""

    SWEEP_S = 0.05

    def __init__(self) -> None:
        self.waiting: dict[Late, float] = {}
        self._sweeping = False

    def watch(self, conn: Late, due: float) -> None:
        self.waiting[conn] = due
        if not self._sweeping:
            self._sweeping = True
            asyncio.get_running_loop().call_later(self.SWEEP_S, self._sweep)

    def forget(self, conn: Late) -> None:
        self.waiting.pop(conn, None)

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        for conn, due in list(self.waiting.items()):
            if due <= now:
                del self.waiting[conn]
                conn.headers_late()
        if self.waiting:
            loop.call_later(self.SWEEP_S, self._sweep)
        else:
            self._sweeping = False
