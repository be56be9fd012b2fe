"""The embedded store: one SQLite file (WAL mode), through one aiosqlite connection.

One connection and a lock: a transaction's statements never interleave with another coroutine's, and
writes are serialized, which SQLite needs anyway. Each transaction takes the write lock at BEGIN
(IMMEDIATE), so a second process on the same file (a CLI, a mistaken second gateway) waits up to
`busy_timeout` instead of failing mid-transaction or double-claiming a batch line.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Coroutine, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from vlgate.store.base import StoreError
from vlgate.store.sql import SqlStore, Tx

BUSY_TIMEOUT_MS = 10_000
T = TypeVar("T")


def sqlite_path(url: str) -> str:
    """sqlite:///relative.db, sqlite:////absolute/path.db (as SQLAlchemy), sqlite:///:memory:."""
    for prefix in ("sqlite:///", "sqlite://"):
        if url.startswith(prefix):
            return url[len(prefix):] or ":memory:"
    raise ValueError(f"not a sqlite URL: {url}")


class _SqliteTx:
    """A transaction's statements. Each runs to its end (its cursor closed) even when the caller is cancelled
    meanwhile: the driver's thread runs it anyway, and a statement left open makes the next COMMIT fail."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self.conn = conn
        self.running: asyncio.Future[Any] | None = None  # the statement in the driver's thread now

    async def whole(self, work: Coroutine[Any, Any, T]) -> T:
        task = self.running = asyncio.ensure_future(work)
        return await asyncio.shield(task)

    async def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        return await self.whole(self._run(sql, params))

    async def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return await self.whole(self._rows(sql, params))

    async def many(self, sql: str, params: Sequence[Sequence[Any]]) -> None:
        await self.whole(self.conn.executemany(sql, params))

    async def _run(self, sql: str, params: Sequence[Any]) -> int:
        async with self.conn.execute(sql, params) as cursor:
            return cursor.rowcount

    async def _rows(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        async with self.conn.execute(sql, params) as cursor:
            return [tuple(row) for row in await cursor.fetchall()]

    async def undo(self) -> None:
        """After a failure or a cancel: the statement still running ends, then the transaction is rolled back."""
        if self.running is not None:
            await asyncio.gather(self.running, return_exceptions=True)
        await _rollback(self.conn)


class SqliteStore(SqlStore):
    dialect = "sqlite"

    def __init__(self, url: str) -> None:
        self.url = url
        self.path = sqlite_path(url)
        self._conn: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        try:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            conn = await aiosqlite.connect(self.path, isolation_level=None)  # we BEGIN and COMMIT ourselves
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the SQLite store at {self.path}: {exc}") from exc
        self._conn = conn
        try:
            await conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            await conn.execute("PRAGMA journal_mode = WAL")
            await conn.execute("PRAGMA synchronous = NORMAL")  # WAL: durable across a process crash (SIGKILL)
            async with self.tx() as tx:  # BEGIN IMMEDIATE: one process migrates at a time
                await self.migrate(tx)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()

    @asynccontextmanager
    async def tx(self) -> AsyncIterator[Tx]:
        async with self._lock:
            conn = self._conn
            if conn is None:
                raise StoreError("the store is closed")
            tx = _SqliteTx(conn)
            try:
                await tx.whole(conn.execute("BEGIN IMMEDIATE"))
            except sqlite3.OperationalError as exc:
                raise StoreError(f"the SQLite store at {self.path}: {exc}") from exc
            except BaseException:  # cancelled: the BEGIN ran all the same; left open, every later
                await asyncio.shield(tx.undo())  # transaction would fail "within a transaction"
                raise
            try:
                yield tx
            except BaseException as exc:
                await asyncio.shield(tx.undo())  # shielded: a second cancel must not leave it open either
                if isinstance(exc, sqlite3.OperationalError):
                    raise StoreError(f"the SQLite store at {self.path}: {exc}") from exc
                raise
            try:
                await conn.commit()
            except sqlite3.OperationalError as exc:
                await _rollback(conn)
                raise StoreError(f"the SQLite store at {self.path}: {exc}") from exc


async def _rollback(conn: aiosqlite.Connection) -> None:
    try:
        await conn.rollback()
    except sqlite3.Error:
        pass  # already rolled back (SQLite rolls back itself on some errors)
