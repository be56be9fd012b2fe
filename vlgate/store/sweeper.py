"""Retention: a task that deletes expired records (with their children and lines) every sweep interval.

Records carry their own `expires_at` (set by the routes from the `retention` settings when they are stored),
so the sweep is one indexed range delete; every replica may sweep, the deletes do not conflict.
"""

from __future__ import annotations

import asyncio
import logging
import time

from vlgate.store.base import Store, StoreError

log = logging.getLogger("vlgate.store")


class Sweeper:
    def __init__(self, store: Store, interval_s: float) -> None:
        self.store = store
        self.interval_s = interval_s
        self.swept = 0  # records deleted since start
        self.last_at: float | None = None  # when the last sweep finished
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="vlgate-store-sweeper")

    async def sweep_once(self) -> int:
        gone = await self.store.sweep(time.time())
        self.swept += gone
        self.last_at = time.time()
        if gone:
            log.info("store sweeper: %d expired records deleted", gone)
        return gone

    async def _run(self) -> None:
        while True:
            try:
                await self.sweep_once()
            except StoreError as exc:  # the database is away for now: the next sweep tries again
                log.warning("store sweeper: %s", exc)
            except Exception:  # a bug must not end retention for good
                log.exception("store sweeper failed")
            await asyncio.sleep(self.interval_s)

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
