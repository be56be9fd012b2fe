"""File records (`/v1/files` uploads and batch output/error files) as the store keeps them.

A file's `purpose` is also kept as the record's `parent` ("purpose:batch"): the store pages a parent's
records in order, so `GET /v1/files?purpose=batch` pages as exactly as the unfiltered list. No record has
an id of that form, so nothing is ever deleted as its child.
"""

from __future__ import annotations

from vlgate.store.base import FILE, Record

PURPOSES = ("batch", "user_data", "assistants", "vision", "fine-tune")  # what an upload may name
OUTPUT_PURPOSE = "batch_output"


def by_purpose(purpose: str) -> str:
    return "purpose:" + purpose


def new_file(id: str, owner: str, *, filename: str, purpose: str, content: bytes, now: int,
             keep_s: float | None) -> Record:
    """A file record with its content; `keep_s`: seconds until the sweeper deletes it (None or 0: kept)."""
    expires = now + int(keep_s) if keep_s else None
    data = {"id": id, "object": "file", "bytes": len(content), "created_at": now, "expires_at": expires,
            "filename": filename, "purpose": purpose, "status": "processed", "status_details": None}
    return Record(FILE, id, owner, data, created_at=now, parent=by_purpose(purpose), expires_at=expires,
                  blob=content)
