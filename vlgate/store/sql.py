"""The Store in SQL, once for both databases: each dialect supplies only transactions (`tx`).

Statements use `?` placeholders and SQL that SQLite and PostgreSQL both speak (ON CONFLICT, RETURNING,
partial indexes). The dialects differ in how a transaction locks: SQLite takes the database's write lock
at BEGIN (one writer at a time); PostgreSQL locks the lines a claim takes (`FOR UPDATE SKIP LOCKED`, so two
replicas claiming at once take different lines and never wait on each other).
"""

from __future__ import annotations

import abc
import time
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

import orjson

from vlgate.store import migrations
from vlgate.store.base import BATCH, Line, LineCounts, LineResult, Order, Record, Store

_COLUMNS = "seq, kind, id, owner, parent, created_at, expires_at, data"
_SWEEP_CHUNK = 500  # expired records deleted per transaction (short transactions; bounded parameter lists)
LINES_KIND = "batch_line"  # stats: the lines of batch jobs, counted beside the records


class Tx(Protocol):
    """One transaction's statements (`?` placeholders)."""

    async def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Execute; the number of rows changed."""

    async def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...

    async def many(self, sql: str, params: Sequence[Sequence[Any]]) -> None: ...


def dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def loads(value: Any) -> Any:
    """A JSON column as the driver returns it: text (SQLite) or already decoded (PostgreSQL's loader)."""
    return orjson.loads(value) if isinstance(value, (str, bytes, memoryview)) else value


def marks(n: int) -> str:
    return ", ".join("?" * n)


def _status(data: dict[str, Any]) -> str | None:
    status = data.get("status")
    return status if isinstance(status, str) else None


def _record(row: Sequence[Any], blob: bytes | None = None) -> Record:
    seq, kind, id, owner, parent, created_at, expires_at, data = row[:8]
    return Record(kind=kind, id=id, owner=owner, data=loads(data), created_at=int(created_at), parent=parent,
                  expires_at=expires_at, seq=int(seq), blob=blob)


class SqlStore(Store):
    dialect: migrations.Dialect
    SKIP_LOCKED = ""  # ends the SELECTs of claims and sweeps (PostgreSQL: FOR UPDATE SKIP LOCKED)

    @abc.abstractmethod
    def tx(self) -> AbstractAsyncContextManager[Tx]:
        """A transaction: committed when the block ends, rolled back on an exception; driver errors raised
        as StoreError. SQLite's takes the write lock at once."""

    async def migrate(self, tx: Tx) -> None:
        """Apply the steps not yet applied; the caller holds the migration lock inside `tx`."""
        await tx.run(migrations.VERSION_TABLE[self.dialect])
        applied = (await tx.rows("SELECT COALESCE(MAX(version), 0) FROM schema_version"))[0][0]
        for version, statements in migrations.pending(self.dialect, int(applied)):
            for statement in statements:
                await tx.run(statement)
            await tx.run("INSERT INTO schema_version (version, applied_at) VALUES (?, ?)", (version, time.time()))

    # -- records
    async def add(self, records: Sequence[Record]) -> None:
        now = int(time.time())
        async with self.tx() as tx:
            for r in records:
                r.created_at = r.created_at or now
                data = dumps(r.data)
                row = await tx.rows(
                    "INSERT INTO records (kind, id, owner, parent, status, created_at, expires_at, size, blob_size,"
                    " data, blob) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING seq",
                    (r.kind, r.id, r.owner, r.parent, _status(r.data), r.created_at, r.expires_at, len(data),
                     len(r.blob or b""), data, r.blob))
                r.seq = int(row[0][0])

    async def save(self, record: Record) -> None:
        r = record
        r.created_at = r.created_at or int(time.time())
        data = dumps(r.data)
        async with self.tx() as tx:
            row = await tx.rows(
                "INSERT INTO records (kind, id, owner, parent, status, created_at, expires_at, size, blob_size,"
                " data, blob) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (kind, id) DO UPDATE SET data = excluded.data, status = excluded.status,"
                " size = excluded.size, expires_at = excluded.expires_at,"
                " blob = COALESCE(excluded.blob, records.blob),"
                " blob_size = CASE WHEN excluded.blob IS NULL THEN records.blob_size ELSE excluded.blob_size END"
                " RETURNING seq, created_at",
                (r.kind, r.id, r.owner, r.parent, _status(r.data), r.created_at, r.expires_at, len(data),
                 len(r.blob or b""), data, r.blob))
        r.seq, r.created_at = int(row[0][0]), int(row[0][1])

    async def replace_if(self, record: Record, statuses: Sequence[str]) -> bool:
        """Also replaces `expires_at` (a finished batch starts its retention)."""
        if not statuses:
            return False
        data = dumps(record.data)
        async with self.tx() as tx:
            return await tx.run(
                f"UPDATE records SET data = ?, status = ?, size = ?, expires_at = ?"
                f" WHERE kind = ? AND id = ? AND status IN ({marks(len(statuses))})",
                (data, _status(record.data), len(data), record.expires_at, record.kind, record.id, *statuses)) > 0

    async def get(self, kind: str, id: str, owner: str, *, with_blob: bool = False) -> Record | None:
        columns = _COLUMNS + (", blob" if with_blob else "")
        async with self.tx() as tx:
            rows = await tx.rows(f"SELECT {columns} FROM records WHERE kind = ? AND id = ? AND owner = ?",
                                 (kind, id, owner))
        if not rows:
            return None
        return _record(rows[0], bytes(rows[0][8]) if with_blob and rows[0][8] is not None else None)

    async def delete(self, kind: str, id: str, owner: str) -> bool:
        async with self.tx() as tx:
            if not await tx.run("DELETE FROM records WHERE kind = ? AND id = ? AND owner = ?", (kind, id, owner)):
                return False
            await self._delete_dependents(tx, [id])
        return True

    async def _delete_dependents(self, tx: Tx, ids: Sequence[str]) -> int:
        """Children and batch lines of deleted records; how many children went."""
        places = marks(len(ids))
        children = await tx.run(f"DELETE FROM records WHERE parent IN ({places})", ids)
        await tx.run(f"DELETE FROM batch_lines WHERE batch_id IN ({places})", ids)
        return children

    async def list_page(self, kind: str, owner: str, *, parent: str | None = None, after: str | None = None,
                        limit: int = 20, order: Order = "desc") -> tuple[list[Record], bool]:
        """An `after` that is unknown (or another owner's, or another parent's) gives an empty page."""
        where, params = "kind = ? AND owner = ?", [kind, owner]
        if parent is not None:
            where += " AND parent = ?"
            params.append(parent)
        direction, compare = ("DESC", "<") if order == "desc" else ("ASC", ">")
        async with self.tx() as tx:
            if after is not None:
                found = await tx.rows(f"SELECT seq FROM records WHERE {where} AND id = ?", (*params, after))
                if not found:
                    return [], False
                where += f" AND seq {compare} ?"
                params.append(found[0][0])
            rows = await tx.rows(f"SELECT {_COLUMNS} FROM records WHERE {where} ORDER BY seq {direction} LIMIT ?",
                                 (*params, limit + 1))
        return [_record(row) for row in rows[:limit]], len(rows) > limit

    async def content(self, kind: str, id: str, owner: str) -> bytes | None:
        async with self.tx() as tx:
            rows = await tx.rows("SELECT blob FROM records WHERE kind = ? AND id = ? AND owner = ?", (kind, id, owner))
        if not rows or rows[0][0] is None:
            return None
        return bytes(rows[0][0])

    # -- batch lines
    async def add_lines(self, batch_id: str, lines: Sequence[Line]) -> None:
        rows = []
        for line in lines:
            body = dumps(line.body)
            rows.append((batch_id, line.index, line.custom_id, body, len(body)))
        async with self.tx() as tx:
            await tx.many("INSERT INTO batch_lines (batch_id, idx, custom_id, body, size) VALUES (?, ?, ?, ?, ?)",
                          rows)

    async def claim_lines(self, worker: str, limit: int, lease_s: float) -> list[Line]:
        now = time.time()
        claimed: list[Line] = []
        async with self.tx() as tx:
            batches = await tx.rows("SELECT id FROM records WHERE kind = ? AND status = 'in_progress' ORDER BY seq",
                                    (BATCH,))
            for (batch_id,) in batches:
                rows = await tx.rows(
                    "SELECT idx, custom_id, body FROM batch_lines WHERE batch_id = ?"
                    " AND state IN ('pending', 'claimed') AND lease_until < ? ORDER BY idx LIMIT ?" + self.SKIP_LOCKED,
                    (batch_id, now, limit - len(claimed)))
                if not rows:
                    continue
                indexes = [row[0] for row in rows]
                await tx.run(f"UPDATE batch_lines SET state = 'claimed', worker = ?, lease_until = ?"
                             f" WHERE batch_id = ? AND idx IN ({marks(len(indexes))})",
                             (worker, now + lease_s, batch_id, *indexes))
                claimed += [Line(batch_id, int(idx), custom_id, loads(body)) for idx, custom_id, body in rows]
                if len(claimed) >= limit:
                    break
        return claimed

    async def renew(self, worker: str, lease_s: float) -> None:
        async with self.tx() as tx:
            await tx.run("UPDATE batch_lines SET lease_until = ? WHERE worker = ? AND state = 'claimed'",
                         (time.time() + lease_s, worker))

    async def finish_line(self, worker: str, batch_id: str, index: int, result: LineResult) -> bool:
        text = dumps(result.result)
        async with self.tx() as tx:
            return await tx.run(
                "UPDATE batch_lines SET state = 'done', worker = NULL, ok = ?, result = ?,"
                " size = size + ? WHERE batch_id = ? AND idx = ? AND worker = ? AND state = 'claimed'",
                (result.ok, text, len(text), batch_id, index, worker)) > 0

    async def release_lines(self, worker: str) -> None:
        async with self.tx() as tx:
            await tx.run("UPDATE batch_lines SET state = 'pending', worker = NULL, lease_until = 0"
                         " WHERE worker = ? AND state = 'claimed'", (worker,))

    async def cancel_lines(self, batch_id: str) -> None:
        async with self.tx() as tx:
            await tx.run("UPDATE batch_lines SET state = 'cancelled', worker = NULL"
                         " WHERE batch_id = ? AND state IN ('pending', 'claimed')", (batch_id,))

    async def line_counts(self, batch_id: str) -> LineCounts:
        async with self.tx() as tx:
            rows = await tx.rows("SELECT state, ok, COUNT(*) FROM batch_lines WHERE batch_id = ? GROUP BY state, ok",
                                 (batch_id,))
        counts = LineCounts()
        for state, ok, n in rows:
            counts.total += n
            if state == "done":
                if ok:
                    counts.completed += n
                else:
                    counts.failed += n
            elif state == "cancelled":
                counts.cancelled += n
        return counts

    async def line_results(self, batch_id: str, *, after: int = -1, limit: int | None = None) -> list[LineResult]:
        page, params = ("", (batch_id, after)) if limit is None else (" LIMIT ?", (batch_id, after, limit))
        async with self.tx() as tx:
            rows = await tx.rows("SELECT idx, ok, result FROM batch_lines WHERE batch_id = ? AND state = 'done'"
                                 " AND idx > ? ORDER BY idx" + page, params)
        return [LineResult(int(idx), bool(ok), loads(result)) for idx, ok, result in rows]

    # -- operations
    async def sweep(self, now: float) -> int:
        gone = 0
        while True:
            async with self.tx() as tx:
                rows = await tx.rows("SELECT seq, id FROM records WHERE expires_at IS NOT NULL AND expires_at < ?"
                                     " LIMIT ?" + self.SKIP_LOCKED, (now, _SWEEP_CHUNK))
                if not rows:
                    return gone
                await tx.run(f"DELETE FROM records WHERE seq IN ({marks(len(rows))})", [seq for seq, _ in rows])
                gone += len(rows) + await self._delete_dependents(tx, [id for _, id in rows])

    async def stats(self) -> dict[str, tuple[int, int]]:
        """Also the lines of batch jobs, as kind `batch_line`."""
        async with self.tx() as tx:
            rows = await tx.rows("SELECT kind, COUNT(*), SUM(size + blob_size) FROM records GROUP BY kind")
            lines = await tx.rows("SELECT COUNT(*), SUM(size) FROM batch_lines")
        out = {kind: (int(n), int(size or 0)) for kind, n, size in rows}
        if lines[0][0]:
            out[LINES_KIND] = (int(lines[0][0]), int(lines[0][1] or 0))
        return out

    async def count_by_status(self, kind: str) -> dict[str, int]:
        async with self.tx() as tx:
            rows = await tx.rows("SELECT status, COUNT(*) FROM records WHERE kind = ? GROUP BY status", (kind,))
        return {status or "": int(n) for status, n in rows}
