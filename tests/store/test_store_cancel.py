"""A store call cancelled part-way (a client gone, a batch line stopped, a shutdown) leaves the store usable:
the transaction it was in is undone, and the next call works. SQLite ran the cancelled BEGIN in its
driver's thread anyway, so without the undo every later transaction failed "within a transaction"."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from vlgate.store.base import BATCH, Record, Store


def test_cancelled_calls_leave_the_store_usable(store_run: Callable[..., None]) -> None:
    async def scenario(store: Store, url: str) -> None:
        for i in range(60):
            call = asyncio.ensure_future(store.add([Record(BATCH, f"b{i}", "alice", {"id": f"b{i}", "status": "x"})]))
            for _ in range(i % 6):  # cancelled at a different point of the transaction each time
                await asyncio.sleep(0)
            call.cancel()
            await asyncio.gather(call, return_exceptions=True)
            await store.get(BATCH, "b0", "alice")  # raises StoreError when the connection was left in a transaction
        records, _ = await store.list_page(BATCH, "alice", limit=100)
        assert all(r.data["status"] == "x" for r in records)

    store_run(scenario)
