"""/v1/files: upload (multipart, as the openai SDK sends it), list, retrieve, content, delete.

Files belong to the key that uploaded them: another key's file is exactly as absent as an unknown id. A
`purpose: batch` file is checked as a batch input file at upload (JSONL, one request a line: `batches/
lines.py`), so a bad line is refused with its number before a batch is made of it. Content downloads
count their bytes against the gateway's bytes-held budget while they are sent (a 200 MB file, many
times at once, must not fill the host).
"""

from __future__ import annotations

import secrets
import time

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from vlgate.batches import lines
from vlgate.batches.files import PURPOSES, by_purpose, new_file
from vlgate.errors import APIError
from vlgate.gateway.apis.files.upload import Held, read_upload
from vlgate.gateway.endpoint.local import Local, list_object, not_found, store_route
from vlgate.gateway.gateway import Gateway
from vlgate.store.base import FILE

MIN_EXPIRES_S, MAX_EXPIRES_S = 3600, 30 * 86400  # OpenAI's bounds for `expires_after[seconds]`
MAX_FILENAME = 255


@store_route
async def create(request: Request) -> Response:
    local = Local(request, writes=True)
    gw, settings = local.gw, local.gw.config.storage
    held = Held(gw.bodies)
    try:
        upload = await read_upload(request, gw.bodies, held, max_file_bytes=settings.batches.max_file_bytes,
                                   timeout_s=gw.config.gateway.limits.body_timeout_s)
        purpose = upload.fields.get("purpose")
        if purpose not in PURPOSES:
            raise APIError(400, f"purpose must be one of {', '.join(PURPOSES)} (got {str(purpose)[:50]!r}).",
                           param="purpose", code="invalid_value")
        if purpose == "batch":
            try:
                await lines.check(upload.content, max_lines=settings.batches.max_lines,
                                  max_line_bytes=gw.config.gateway.max_body_bytes)
            except lines.InputError as exc:
                raise APIError(400, f"The file is not a valid batch input file. {exc}", param="file",
                               code=exc.code) from None
        now = int(time.time())
        record = new_file("file-" + secrets.token_hex(12), local.owner, filename=upload.filename[-MAX_FILENAME:],
                          purpose=purpose, content=upload.content, now=now,
                          keep_s=_keep_s(upload.fields) or settings.retention.files_s)
        await local.store.add([record])
    finally:
        held.release()
    return JSONResponse(record.data)


def _keep_s(fields: dict[str, str]) -> int | None:
    """`expires_after[anchor]=created_at` + `expires_after[seconds]` (the SDK's form encoding), or None."""
    anchor, seconds = fields.get("expires_after[anchor]"), fields.get("expires_after[seconds]")
    if anchor is None and seconds is None:
        return None
    if anchor != "created_at":
        raise APIError(400, "expires_after[anchor] must be 'created_at'.", param="expires_after.anchor",
                       code="invalid_value")
    try:
        value = int(seconds or "")
    except ValueError:
        value = 0
    if not MIN_EXPIRES_S <= value <= MAX_EXPIRES_S:
        raise APIError(400, f"expires_after[seconds] must be an integer from {MIN_EXPIRES_S} to {MAX_EXPIRES_S}.",
                       param="expires_after.seconds", code="invalid_value")
    return value


@store_route
async def list_files(request: Request) -> Response:
    local = Local(request)
    after, limit, order = local.page(max_limit=10_000)
    purpose = request.query_params.get("purpose") or None
    records, more = await local.store.list_page(FILE, local.owner, parent=by_purpose(purpose) if purpose else None,
                                                after=after, limit=limit, order=order)
    return JSONResponse(list_object(records, more))


@store_route
async def retrieve(request: Request) -> Response:
    local = Local(request)
    record = await local.record(FILE, "file", "file_id")
    return JSONResponse(record.data)


@store_route
async def content(request: Request) -> Response:
    local = Local(request)
    record = await local.record(FILE, "file", "file_id")
    file_id = record.id
    held = Held(local.gw.bodies)
    held.take(int(record.data.get("bytes") or 0))  # before loading it
    try:
        blob = await local.store.content(FILE, file_id, local.owner)
    except BaseException:
        held.release()
        raise
    if blob is None:  # deleted meanwhile
        held.release()
        raise not_found("file", file_id, "file_id")
    return HeldResponse(blob, held)


@store_route
async def delete(request: Request) -> Response:
    local = Local(request, writes=True)
    file_id = local.param("file_id")
    if not await local.store.delete(FILE, file_id, local.owner):
        raise not_found("file", file_id, "file_id")
    return JSONResponse({"id": file_id, "object": "file", "deleted": True})


class HeldResponse(Response):
    """A file's bytes, counted in the budget until sent (or the client left)."""

    media_type = "application/octet-stream"

    def __init__(self, content: bytes, held: Held) -> None:
        super().__init__(content)
        self.held = held

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.held.release()


def routes(gw: Gateway) -> list[BaseRoute]:
    return [Route("/v1/files", create, methods=["POST"]), Route("/v1/files", list_files, methods=["GET"]),
            Route("/v1/files/{file_id}", retrieve, methods=["GET"]),
            Route("/v1/files/{file_id}", delete, methods=["DELETE"]),
            Route("/v1/files/{file_id}/content", content, methods=["GET"])]
