"""The store's one small interface: owned JSON records, and the lines of batch jobs.

Everything stateful (stored responses, conversations and their items, files, batches) is a `Record`: an
object as the API shows it (`data`), its kind, its id, and the key that made it (`owner`). Reads and
deletes name the owner, so another key's object is exactly as absent as an unknown id. Batch lines are
their own table because replicas claim them: a claim is leased to a worker, renewed while it works, and
taken over by any replica when the lease runs out (a replica that died); each line has one result row,
so a re-run line can never appear twice in the output.

Two implementations: `sqlite.py` (embedded, the default) and `postgres.py` (several replicas).
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

Order = Literal["asc", "desc"]

# kinds of record
RESPONSE = "response"
RESPONSE_INPUT = "response_input"  # an input item of a stored response (parent: the response id)
CONVERSATION = "conversation"
CONVERSATION_ITEM = "conversation_item"  # parent: the conversation id
FILE = "file"
BATCH = "batch"


@dataclass(slots=True)
class Record:
    kind: str
    id: str
    owner: str  # the API key's name; "" when the gateway has no keys
    data: dict[str, Any]  # the object as the API shows it
    created_at: int = 0  # unix seconds
    parent: str | None = None  # the record this one belongs to (items of a conversation, inputs of a response)
    expires_at: float | None = None  # the sweeper deletes it after this (unix seconds); None: kept
    seq: int = 0  # insertion order, assigned by the store (lists are ordered by it)
    blob: bytes | None = field(default=None, repr=False)  # a file's content (only loaded by `content`)


@dataclass(slots=True)
class Line:
    """One request line of a batch, as claimed by a worker."""

    batch_id: str
    index: int  # the line's position in the input file (0-based)
    custom_id: str
    body: dict[str, Any]  # the line as uploaded: {custom_id, method, url, body}


@dataclass(slots=True)
class LineCounts:
    total: int = 0
    completed: int = 0  # finished with a 2xx answer
    failed: int = 0  # finished with an error (an error line in the error file)
    cancelled: int = 0  # never run (the batch was cancelled or expired)

    @property
    def finished(self) -> int:
        return self.completed + self.failed + self.cancelled


@dataclass(slots=True)
class LineResult:
    index: int
    ok: bool  # the output file when true, else the error file
    result: dict[str, Any]  # the output or error line, in OpenAI's shape


class StoreError(Exception):
    """The database failed (unreachable, full): answered 503 by the routes, never a 500."""


class Store(abc.ABC):
    """Async; every method is safe to call from several replicas on one database at once."""

    url: str

    @abc.abstractmethod
    async def start(self) -> None:
        """Connect, and run the migrations not yet applied (safe when two replicas start at once)."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    # -- records
    @abc.abstractmethod
    async def add(self, records: Sequence[Record]) -> None:
        """Insert records in order (one transaction); `seq` and `created_at` (when 0) are set on them."""

    @abc.abstractmethod
    async def save(self, record: Record) -> None:
        """Replace an existing record's `data` and `expires_at` (insert when absent)."""

    @abc.abstractmethod
    async def replace_if(self, record: Record, statuses: Sequence[str]) -> bool:
        """Replace `data` only while the stored `data["status"]` is one of `statuses` (compare-and-set:
        a cancel racing a completion, two replicas finalizing one batch). True when it was replaced."""

    @abc.abstractmethod
    async def get(self, kind: str, id: str, owner: str, *, with_blob: bool = False) -> Record | None:
        """The record when it exists and `owner` made it, else None (the same for both)."""

    @abc.abstractmethod
    async def delete(self, kind: str, id: str, owner: str) -> bool:
        """Delete a record and every record whose parent it is (and a batch's lines)."""

    @abc.abstractmethod
    async def list_page(self, kind: str, owner: str, *, parent: str | None = None, after: str | None = None,
                   limit: int = 20, order: Order = "desc") -> tuple[list[Record], bool]:
        """Records in insertion order (`order`), starting after the record with id `after`; and whether
        more follow."""

    @abc.abstractmethod
    async def content(self, kind: str, id: str, owner: str) -> bytes | None:
        """A record's blob (a file's bytes)."""

    # -- batch lines
    @abc.abstractmethod
    async def add_lines(self, batch_id: str, lines: Sequence[Line]) -> None: ...

    @abc.abstractmethod
    async def claim_lines(self, worker: str, limit: int, lease_s: float) -> list[Line]:
        """Up to `limit` lines that are pending, or claimed under a lease that ran out, of batches whose
        record status is `in_progress`; oldest batch first. They are leased to `worker`."""

    @abc.abstractmethod
    async def renew(self, worker: str, lease_s: float) -> None:
        """Extend the lease of every line `worker` holds (its heartbeat)."""

    @abc.abstractmethod
    async def finish_line(self, worker: str, batch_id: str, index: int, result: LineResult) -> bool:
        """Record a line's one result, if `worker` still holds it. False: another worker took it over."""

    @abc.abstractmethod
    async def release_lines(self, worker: str) -> None:
        """Give back every line `worker` holds unfinished (a clean shutdown: others take them at once)."""

    @abc.abstractmethod
    async def cancel_lines(self, batch_id: str) -> None:
        """Lines not finished yet are marked cancelled (never run)."""

    @abc.abstractmethod
    async def line_counts(self, batch_id: str) -> LineCounts: ...

    @abc.abstractmethod
    async def line_results(self, batch_id: str, *, after: int = -1, limit: int | None = None) -> list[LineResult]:
        """Finished lines' results in input order: those whose index is above `after`, at most `limit` (a
        finished batch of 50,000 lines is read a page at a time, the event loop given back in between)."""

    # -- operations
    @abc.abstractmethod
    async def sweep(self, now: float) -> int:
        """Delete records past `expires_at` (with their children and lines); how many records went."""

    @abc.abstractmethod
    async def stats(self) -> dict[str, tuple[int, int]]:
        """Per kind: (records, bytes of data and blobs): the store's size for the status page and /metrics."""

    @abc.abstractmethod
    async def count_by_status(self, kind: str) -> dict[str, int]:
        """How many records of `kind` have each `data["status"]` (batch jobs by status, for the operator)."""
