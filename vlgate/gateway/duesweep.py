"""Things with a due time, found overdue by one periodic sweep instead of a timer each.

A timer per request (`asyncio.timeout`, `call_later` + `cancel`) showed in py-spy at 16 concurrent chats: ~4%
of the gateway's CPU for body reads, ~2% for response heads (Timeout.__aenter__, reschedule, current_task). A
dict entry in and out costs next to nothing. The price: an overdue item is seen up to the sweep's period late.
Used for body-read deadlines (frontdoor/bodies.py) and response-head deadlines (forward/wire.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T", bound=Hashable)


class DueSweep(Generic[T]):
    """Calls `on_due(item)` once for each watched item still watched at its due time (loop time), within
    `every` seconds after it; the sweep runs only while something is watched. One per event loop."""

    def __init__(self, every: float, on_due: Callable[[T], object]) -> None:
        self.every = every
        self.on_due = on_due
        self.waiting: dict[T, float] = {}
        self._sweeping = False

    def watch(self, item: T, due: float) -> None:
        self.waiting[item] = due
        if not self._sweeping:
            self._sweeping = True
            asyncio.get_running_loop().call_later(self.every, self._sweep)

    def forget(self, item: T) -> None:
        self.waiting.pop(item, None)

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        for item, due in list(self.waiting.items()):
            if due <= now:
                del self.waiting[item]
                self.on_due(item)
        if self.waiting:
            loop.call_later(self.every, self._sweep)
        else:
            self._sweeping = False
