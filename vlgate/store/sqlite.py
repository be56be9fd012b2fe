"""The embedded store: one SQLite file (WAL mode), through one aiosqlite connection.

One connection and a lock: a transaction's statements never interleave with another coroutine's, and
writes are serialized, which SQLite needs anyway. Each transaction takes the write lock at BEGIN
(IMMEDIATE), so a second process on the same file (a CLI, a mistaken second gateway) waits up to
`busy_timeout` instead of failing mid-transaction or double-claiming a batch line.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite

from vlgate.store.base import StoreError
from vlgate.store.sql import SqlStore, Tx

BUSY_TIMEOUT_MS = 10_000


def sqlite_path(url: str) -> str:
    """sqlite:///relative.db, sqlite:////absolute/path.db (as SQLAlchemy), sqlite:///:memory:."""
    for prefix in ("sqlite:///", "sqlite://"):
        if url.startswith(prefix):
            return url[len(prefix):] or ":memory:"
    raise ValueError(f"not a sqlite URL: {url}")


class _SqliteTx:
    def __init__(self, conn: aiosqlite.Connection) -> None:
        self.conn = conn

    async def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        async with self.conn.execute(sql, params) as cursor:
            return cursor.rowcount

    async def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        async with self.conn.execute(sql, params) as cursor:
            return [tuple(row) for row in await cursor.fetchall()]

    async def many(self, sql: str, params: Sequence[Sequence[Any]]) -> None:
        await self.conn.executemany(sql, params)


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
            try:
                await conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise StoreError(f"the SQLite store at {self.path}: {exc}") from exc
            try:
                yield _SqliteTx(conn)
            except BaseException as exc:
                await _rollback(conn)
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
