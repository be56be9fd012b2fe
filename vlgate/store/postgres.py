"""The fleet's store: PostgreSQL through psycopg 3 (async) and a connection pool.

Several gateway replicas share one database. Claims lock the lines they take and skip lines another
replica is taking (`FOR UPDATE SKIP LOCKED`), so concurrent claims never return the same line and never
wait on each other; migrations run under an advisory transaction lock, so replicas starting at once apply
each schema step once. Requires the `postgres` extra (psycopg, psycopg-pool).
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import orjson
import psycopg
from psycopg.types.json import set_json_loads
from psycopg_pool import AsyncConnectionPool

from vlgate.store import migrations
from vlgate.store.base import StoreError
from vlgate.store.sql import SqlStore, Tx
from vlgate.store.urls import redacted

CONNECT_TIMEOUT_S = 10
POOL_MAX = 10  # connections per replica: store calls are short; more would only queue inside PostgreSQL


@functools.lru_cache(maxsize=256)
def _pg(sql: str) -> str:
    """`?` placeholders as psycopg's `%s` (the shared SQL has no other `?` or `%`)."""
    return sql.replace("?", "%s")


class _PgTx:
    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self.conn = conn

    async def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        cursor = await self.conn.execute(_pg(sql), params)
        return cursor.rowcount

    async def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        cursor = await self.conn.execute(_pg(sql), params)
        return await cursor.fetchall()

    async def many(self, sql: str, params: Sequence[Sequence[Any]]) -> None:
        async with self.conn.cursor() as cursor:
            await cursor.executemany(_pg(sql), params)


async def _configure(conn: psycopg.AsyncConnection[Any]) -> None:
    set_json_loads(orjson.loads, conn)  # json columns decoded by orjson


class PostgresStore(SqlStore):
    dialect = "postgresql"
    SKIP_LOCKED = " FOR UPDATE SKIP LOCKED"

    def __init__(self, url: str) -> None:
        self._dsn = url
        self.url = redacted(url)  # shown; the password never leaves this object
        self._pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] | None = None

    def _error(self, exc: BaseException) -> StoreError:
        return StoreError(f"the PostgreSQL store at {self.url}: {_message(exc)}")

    async def start(self) -> None:
        try:  # one plain connection first: an unreachable database fails now, with the driver's reason
            conn = await psycopg.AsyncConnection.connect(self._dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
        except psycopg.Error as exc:
            raise StoreError(f"cannot connect to the PostgreSQL store at {self.url}: {_message(exc)}") from exc
        try:
            await _configure(conn)
            async with conn.transaction():
                tx = _PgTx(conn)
                await tx.run("SELECT pg_advisory_xact_lock(?)", (migrations.ADVISORY_KEY,))
                await self.migrate(tx)
        except psycopg.Error as exc:
            raise StoreError(f"cannot migrate the PostgreSQL store at {self.url}: {_message(exc)}") from exc
        finally:
            await conn.close()
        pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] = AsyncConnectionPool(
            self._dsn, min_size=1, max_size=POOL_MAX, open=False, configure=_configure,
            kwargs={"autocommit": True, "connect_timeout": CONNECT_TIMEOUT_S}, timeout=CONNECT_TIMEOUT_S,
            name="vlgate-store")
        try:
            await pool.open(wait=True, timeout=CONNECT_TIMEOUT_S)
        except psycopg.Error as exc:
            await pool.close()
            raise StoreError(f"cannot connect to the PostgreSQL store at {self.url}: {_message(exc)}") from exc
        self._pool = pool

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    @asynccontextmanager
    async def tx(self) -> AsyncIterator[Tx]:
        pool = self._pool
        if pool is None:
            raise StoreError("the store is closed")
        try:
            async with pool.connection() as conn, conn.transaction():
                yield _PgTx(conn)
        except psycopg.OperationalError as exc:  # connection lost, pool timeout, deadlock: the routes' 503
            raise self._error(exc) from exc


def _message(exc: BaseException) -> str:
    """The driver's message, with any password it quotes taken out."""
    return redacted(str(exc).strip()) or type(exc).__name__
