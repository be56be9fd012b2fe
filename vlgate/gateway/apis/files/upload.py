"""A multipart upload (`POST /v1/files`, as the openai SDK sends it), read under the front door's limits.

The API routes' JSON-only rule does not apply here, but its limits do: the whole body is bounded by
`storage.batches.max_file_bytes` (413 before reading when Content-Length says more), must arrive within
`limits.body_timeout_s` (408), and its bytes count against the gateway's bytes-held budget
(`frontdoor/bodies.py`, 503 + Retry-After when full) until the answer is sent: the file's content is
held whole while it is checked and stored. Starlette's parser (python-multipart) spools the file part to
a temporary file; at most one file and a few small fields are accepted.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.types import Message, Receive

from vlgate.errors import APIError
from vlgate.gateway.endpoint.endpoint import header
from vlgate.gateway.frontdoor.bodies import BodyBudget

FORM_OVERHEAD = 64 * 1024  # multipart boundaries, part headers and the small fields, beyond the file itself
MAX_FIELDS = 8
MAX_FIELD_BYTES = 4096


@dataclass
class Upload:
    filename: str
    content: bytes
    fields: dict[str, str] = field(default_factory=dict)


class Held:
    """Bytes of one upload counted against the budget; `release()` gives them back."""

    def __init__(self, budget: BodyBudget) -> None:
        self.budget = budget
        self.held = 0

    def take(self, size: int) -> None:
        self.budget.take(size)
        self.held += size

    def release(self) -> None:
        self.budget.give_back(self.held)
        self.held = 0


def _bounded(receive: Receive, limit: int, held: Held, counted: bool) -> Receive:
    """`receive`, refusing a body over `limit`; each chunk counted against the budget unless the declared
    length already was (`counted`)."""
    size = 0

    async def bounded() -> Message:
        nonlocal size
        message = await receive()
        if message["type"] == "http.request":
            n = len(message.get("body", b""))
            size += n
            if size > limit:
                raise APIError(413, f"The upload exceeds the limit of {limit} bytes.", code="file_too_large")
            if not counted:
                held.take(n)
        return message

    return bounded


async def read_upload(request: Request, budget: BodyBudget, held: Held, *, max_file_bytes: int,
                      timeout_s: float) -> Upload:
    """The uploaded file and the form's other fields; the bytes stay counted in `held` for the caller to
    release once it has stored them."""
    kind = (request.headers.get("content-type") or "").split(";", 1)[0].strip().lower()
    if kind != "multipart/form-data":
        raise APIError(415, f"Content-Type must be multipart/form-data (got {kind[:100] or 'none'}): upload the "
                       "file as a form with fields `file` and `purpose`.", param="Content-Type",
                       code="unsupported_media_type")
    limit = max_file_bytes + FORM_OVERHEAD
    declared = header(request.scope, b"content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise APIError(400, "Invalid Content-Length header.") from None
        if size > limit:
            raise APIError(413, f"The upload of {size} bytes exceeds the limit of {max_file_bytes} bytes "
                           "(storage.batches.max_file_bytes).", code="file_too_large")
        held.take(max(0, size))  # before reading: a refusal costs nothing
    form_request = Request(request.scope, _bounded(request.receive, limit, held, declared is not None))
    task = asyncio.current_task()
    assert task is not None
    budget.deadlines.watch(task, timeout_s)
    try:
        form = await form_request.form(max_files=1, max_fields=MAX_FIELDS, max_part_size=MAX_FIELD_BYTES)
        try:
            return await _parts(form.multi_items(), max_file_bytes)
        finally:
            await form.close()
    except asyncio.CancelledError:
        if not budget.deadlines.expired(task):
            raise
        task.uncancel()
        raise APIError(408, f"The upload did not arrive within {timeout_s:g}s.", code="request_timeout",
                       headers={"Connection": "close"}) from None
    except HTTPException as exc:  # python-multipart's complaint, as Starlette raises it
        raise APIError(400, f"The multipart form is malformed: {exc.detail}", code="invalid_multipart") from None
    except ClientDisconnect:
        raise APIError(400, "The client disconnected during the upload.", code="client_disconnected") from None
    finally:
        budget.deadlines.forget(task)


async def _parts(items: list[tuple[str, str | UploadFile]], max_file_bytes: int) -> Upload:
    upload: UploadFile | None = None
    fields: dict[str, str] = {}
    for name, value in items:
        if isinstance(value, UploadFile):
            if name != "file":
                raise APIError(400, f"Unexpected file field {name[:100]!r}; send the file as `file`.", param=name)
            upload = value
        else:
            fields[name] = value
    if upload is None:
        raise APIError(400, "The form has no `file` field holding a file.", param="file", code="missing_file")
    content = await upload.read()
    if len(content) > max_file_bytes:
        raise APIError(413, f"The file is {len(content)} bytes; the limit is {max_file_bytes} bytes "
                       "(storage.batches.max_file_bytes).", param="file", code="file_too_large")
    return Upload(upload.filename or "upload", content, fields)
