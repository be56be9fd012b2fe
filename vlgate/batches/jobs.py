"""A batch job's life: validating -> in_progress -> finalizing -> completed (or expired), cancelling ->
cancelled, validating -> failed; each step one compare-and-set on the record's status, so two replicas
(or a cancel racing the last line) never both take it.

Finishing builds the output and error files from the lines' one result each; their ids follow from the
batch's id, so a replica that takes over an interrupted finish writes the very same files. A step left
half-done by a replica that died (finalizing, cancelling or validating for longer than STALE_S) is
finished by whoever reads the batch next: the routes and the workers call `settle` on what they read.
`request_counts` are the store's count of lines by result, exact while the batch runs.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson

from vlgate.batches import results
from vlgate.batches.files import OUTPUT_PURPOSE, new_file
from vlgate.store.base import BATCH, LineCounts, Record, Store
from vlgate.store.settings import StorageSettings

PRIVATE = "_vlgate"  # what the gateway keeps in the record beside the API's object (never shown)
WINDOW_S = 24 * 3600  # completion_window "24h", the only one OpenAI offers
PAGE = 2000  # lines read at once while the files are written
STALE_S = 120.0  # a step unfinished this long was left by a replica that died
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})


def show(data: dict[str, Any]) -> dict[str, Any]:
    """The Batch object as the API shows it."""
    return {k: v for k, v in data.items() if k != PRIVATE}


def counts_object(counts: LineCounts) -> dict[str, int]:
    return {"total": counts.total, "completed": counts.completed, "failed": counts.failed}


def new_batch(batch_id: str, owner: str, *, endpoint: str, input_file_id: str, metadata: dict[str, str] | None,
              model: str | None, output_expires_s: int | None, now: int) -> Record:
    data: dict[str, Any] = {
        "id": batch_id, "object": "batch", "endpoint": endpoint, "model": model, "errors": None,
        "input_file_id": input_file_id, "completion_window": "24h", "status": "validating",
        "output_file_id": None, "error_file_id": None, "created_at": now, "in_progress_at": None,
        "expires_at": now + WINDOW_S, "finalizing_at": None, "completed_at": None, "failed_at": None,
        "expired_at": None, "cancelling_at": None, "cancelled_at": None,
        "request_counts": {"total": 0, "completed": 0, "failed": 0}, "metadata": metadata,
        PRIVATE: {"output_expires_s": output_expires_s},
    }
    return Record(BATCH, batch_id, owner, data, created_at=now)


def _step(record: Record, changes: dict[str, Any], expires_at: float | None = None) -> Record:
    data = {**record.data, **changes}
    return Record(BATCH, record.id, record.owner, data, created_at=record.created_at, parent=record.parent,
                  expires_at=expires_at, seq=record.seq)


async def _current(store: Store, record: Record) -> Record:
    """The record as stored now (another step won the race); the one given when it was deleted meanwhile."""
    return await store.get(BATCH, record.id, record.owner) or record


async def start(store: Store, record: Record, total: int) -> Record:
    """validating -> in_progress, once its lines are stored."""
    now = int(time.time())
    new = _step(record, {"status": "in_progress", "in_progress_at": now,
                         "request_counts": {"total": total, "completed": 0, "failed": 0}})
    return new if await store.replace_if(new, ["validating"]) else await _current(store, record)


async def fail(store: Store, record: Record, settings: StorageSettings, message: str, code: str,
               line: int | None = None) -> Record:
    """validating -> failed: nothing of it runs."""
    now = int(time.time())
    errors = {"object": "list", "data": [{"code": code, "message": message, "param": None, "line": line}]}
    new = _step(record, {"status": "failed", "failed_at": now, "errors": errors}, _kept(settings, now))
    if not await store.replace_if(new, ["validating"]):
        return await _current(store, record)
    await store.cancel_lines(record.id)
    return new


async def cancel(store: Store, record: Record, settings: StorageSettings) -> Record:
    """-> cancelling -> cancelled: lines not finished are never run (nor recorded, should one finish)."""
    new = _step(record, {"status": "cancelling", "cancelling_at": int(time.time())})
    if not await store.replace_if(new, ["validating", "in_progress"]):
        return await _current(store, record)
    return await _wrap_up(store, new, settings)


async def settle(store: Store, record: Record, settings: StorageSettings) -> Record:
    """The batch brought up to date: live counts while it runs; finished when its last line is (or its
    window has passed); a step a dead replica left half-done, finished."""
    data, now = record.data, time.time()
    status = data["status"]
    if status == "in_progress":
        if now >= data["expires_at"]:
            return await _finish(store, record, settings, "expired")
        counts = await store.line_counts(record.id)
        if counts.total and counts.finished >= counts.total:
            return await _finish(store, record, settings, "completed")
        record.data = {**data, "request_counts": counts_object(counts)}
    elif status in ("finalizing", "cancelling") and now - (data.get(f"{status}_at") or 0) > STALE_S:
        return await _wrap_up(store, record, settings)
    elif status == "validating" and now - record.created_at > STALE_S:
        return await fail(store, record, settings, "Validation was interrupted (the gateway stopped); create the "
                          "batch again.", "validation_interrupted")
    return record


async def _finish(store: Store, record: Record, settings: StorageSettings, ending: str) -> Record:
    """in_progress -> finalizing (one replica wins) -> `ending`."""
    private = {**record.data.get(PRIVATE, {}), "ending": ending}
    new = _step(record, {"status": "finalizing", "finalizing_at": int(time.time()), PRIVATE: private})
    if not await store.replace_if(new, ["in_progress"]):
        return await _current(store, record)
    return await _wrap_up(store, new, settings)


async def _wrap_up(store: Store, record: Record, settings: StorageSettings) -> Record:
    """finalizing or cancelling -> its end: lines not run are cancelled, the files written, counts fixed."""
    status = record.data["status"]
    private = record.data.get(PRIVATE, {})
    ending = "cancelled" if status == "cancelling" else private.get("ending", "completed")
    if ending != "completed":
        await store.cancel_lines(record.id)
    files, usage = await _write_files(store, record, settings)
    counts = await store.line_counts(record.id)
    now = int(time.time())
    new = _step(record, {"status": ending, f"{ending}_at": now, "request_counts": counts_object(counts),
                         "usage": usage, **files}, _kept(settings, now))
    return new if await store.replace_if(new, [status]) else await _current(store, record)


async def _write_files(store: Store, record: Record, settings: StorageSettings,
                       ) -> tuple[dict[str, str | None], dict[str, Any]]:
    """The output and error files (ids that follow from the batch's), read a page of lines at a time with
    the event loop given back in between; and the usage they add up to."""
    parts: dict[bool, list[bytes]] = {True: [], False: []}
    usage, after = results.Usage(), -1
    while page := await store.line_results(record.id, after=after, limit=PAGE):
        for r in page:
            parts[r.ok].append(orjson.dumps(r.result) + b"\n")
        usage.add(page)
        after = page[-1].index
        await asyncio.sleep(0)
    now = int(time.time())
    keep_s = record.data.get(PRIVATE, {}).get("output_expires_s") or settings.retention.files_s
    files: dict[str, str | None] = {"output_file_id": None, "error_file_id": None}
    for field, kind, ok in (("output_file_id", "output", True), ("error_file_id", "error", False)):
        if parts[ok]:
            file_id = f"file-{record.id.removeprefix('batch_')}-{kind}"
            await store.save(new_file(file_id, record.owner, filename=f"{record.id}_{kind}.jsonl",
                                      purpose=OUTPUT_PURPOSE, content=b"".join(parts[ok]), now=now, keep_s=keep_s))
            files[field] = file_id
    return files, usage.object()


def _kept(settings: StorageSettings, now: float) -> float | None:
    """When a finished batch is swept (None: kept)."""
    keep = settings.retention.batches_s
    return now + keep if keep else None
