"""The store's schema, versioned: each dialect's steps, applied in order at start, each recorded once.

`schema_version` holds one row per applied step. The caller runs `pending` and `record` inside one
transaction that holds the database's migration lock (SQLite: BEGIN IMMEDIATE; PostgreSQL: an advisory
transaction lock), so two replicas starting at once apply each step exactly once: the second waits, then
finds nothing left to do. A step is never edited once released; a change is a new step.

Tables (both dialects):
- `records`: every stored object (kind, id, owner, parent, status, created_at, expires_at, data JSON, blob);
  `seq` is a global increasing sequence (list order); `status` mirrors `data.status` to index batch claims;
  `size`/`blob_size` make the size statistics a cheap sum.
- `batch_lines`: one row per request line of a batch: its state (pending, claimed, done, cancelled), the
  claiming worker and its lease, and the line's one result.
"""

from __future__ import annotations

from typing import Literal

Dialect = Literal["sqlite", "postgresql"]

# PostgreSQL's advisory lock key for migrations (any constant shared by every replica): b"vlgatemi"
ADVISORY_KEY = int.from_bytes(b"vlgatemi", "big") & 0x7FFF_FFFF_FFFF_FFFF

VERSION_TABLE = {
    "sqlite": "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)",
    "postgresql": "CREATE TABLE IF NOT EXISTS schema_version (version integer PRIMARY KEY, "
                  "applied_at double precision NOT NULL)",
}

_INDEXES = [
    "CREATE INDEX records_owner ON records (kind, owner, seq)",
    "CREATE INDEX records_parent ON records (parent, kind, seq)",
    "CREATE INDEX records_expiry ON records (expires_at) WHERE expires_at IS NOT NULL",
    "CREATE INDEX records_status ON records (kind, status, seq)",
    # the lines a claim may take, in input order (finished lines leave the index)
    "CREATE INDEX batch_lines_open ON batch_lines (batch_id, idx) WHERE state IN ('pending', 'claimed')",
    "CREATE INDEX batch_lines_worker ON batch_lines (worker) WHERE state = 'claimed'",
]

STEPS: dict[Dialect, list[list[str]]] = {
    "sqlite": [[
        """CREATE TABLE records (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            kind TEXT NOT NULL, id TEXT NOT NULL, owner TEXT NOT NULL, parent TEXT, status TEXT,
            created_at INTEGER NOT NULL, expires_at REAL,
            size INTEGER NOT NULL, blob_size INTEGER NOT NULL DEFAULT 0,
            data TEXT NOT NULL, blob BLOB,
            UNIQUE (kind, id))""",
        """CREATE TABLE batch_lines (
            batch_id TEXT NOT NULL, idx INTEGER NOT NULL, custom_id TEXT NOT NULL, body TEXT NOT NULL,
            state TEXT NOT NULL DEFAULT 'pending', worker TEXT, lease_until REAL NOT NULL DEFAULT 0,
            ok INTEGER, result TEXT, size INTEGER NOT NULL,
            PRIMARY KEY (batch_id, idx))""",
        *_INDEXES,
    ]],
    # `json`, not `jsonb`: it keeps an object's keys in the order the API wrote them, and accepts \u0000
    "postgresql": [[
        """CREATE TABLE records (
            seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            kind text NOT NULL, id text NOT NULL, owner text NOT NULL, parent text, status text,
            created_at bigint NOT NULL, expires_at double precision,
            size bigint NOT NULL, blob_size bigint NOT NULL DEFAULT 0,
            data json NOT NULL, blob bytea,
            UNIQUE (kind, id))""",
        """CREATE TABLE batch_lines (
            batch_id text NOT NULL, idx integer NOT NULL, custom_id text NOT NULL, body json NOT NULL,
            state text NOT NULL DEFAULT 'pending', worker text, lease_until double precision NOT NULL DEFAULT 0,
            ok boolean, result json, size bigint NOT NULL,
            PRIMARY KEY (batch_id, idx))""",
        *_INDEXES,
    ]],
}

LATEST = len(STEPS["sqlite"])
assert len(STEPS["postgresql"]) == LATEST, "both dialects have the same schema versions"


def pending(dialect: Dialect, applied: int) -> list[tuple[int, list[str]]]:
    """The steps after version `applied`, as (version, statements)."""
    return [(n, stmts) for n, stmts in enumerate(STEPS[dialect], start=1) if n > applied]
