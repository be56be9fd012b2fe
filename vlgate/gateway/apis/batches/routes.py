"""/v1/batches: create, retrieve, list, cancel (OpenAI's Batch API; the lines run in `vlgate/batches/`).

Creating a batch reads its input file (the key's own, `purpose: batch`; another key's is exactly as unknown
as an id that never existed), checks that every line names the batch's endpoint, and stores the lines
before the batch goes `in_progress`: a batch is never half-made (one left half-made by a gateway that
died is `failed` on the next read). Each read settles the batch (`jobs.settle`): exact counts while it
runs, and a batch whose last line finished or whose window passed is finished by whoever looks first.
"""

from __future__ import annotations

import secrets
import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from vlgate.batches import jobs, lines
from vlgate.errors import APIError
from vlgate.gateway.apis.files.upload import Held
from vlgate.gateway.apis.openai.schemas import validate
from vlgate.gateway.endpoint.local import Local, list_object, not_found, store_route
from vlgate.gateway.gateway import Gateway
from vlgate.store.base import BATCH, FILE, Line, Record

ADD_LINES = 1000  # lines stored per transaction while a batch is created (short transactions)


class _ExpiresAfter(BaseModel):
    model_config = ConfigDict(extra="forbid")
    anchor: Literal["created_at"]
    seconds: int = Field(ge=3600, le=30 * 86400)


class CreateBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input_file_id: str = Field(min_length=1, max_length=200)
    endpoint: Literal["/v1/chat/completions", "/v1/responses", "/v1/embeddings"]
    completion_window: Literal["24h"]
    metadata: dict[str, str] | None = Field(default=None, max_length=16)
    output_expires_after: _ExpiresAfter | None = None


def _check_metadata(metadata: dict[str, str] | None) -> None:
    for key, value in (metadata or {}).items():
        if len(key) > 64 or len(value) > 512:
            raise APIError(400, "metadata keys may have at most 64 characters and values 512.", param="metadata",
                           code="invalid_value")


@store_route
async def create(request: Request) -> Response:
    local = Local(request, writes=True)
    body = await local.json()
    validate(CreateBatch, body)
    spec = CreateBatch.model_validate(body)
    _check_metadata(spec.metadata)
    store, gw = local.store, local.gw
    source = await store.get(FILE, spec.input_file_id, local.owner)
    if source is None:
        raise not_found("file", spec.input_file_id, "input_file_id")
    if source.data.get("purpose") != "batch":
        raise APIError(400, f"File {spec.input_file_id} was uploaded with purpose "
                       f"{source.data.get('purpose')!r}; a batch's input file needs purpose 'batch'.",
                       param="input_file_id", code="invalid_file_purpose")
    held = Held(gw.bodies)  # the file is read whole: its bytes count as held, as an upload's do
    try:
        held.take(int(source.data.get("bytes") or 0))
        raw = await store.content(FILE, spec.input_file_id, local.owner)
        if raw is None:  # deleted meanwhile
            raise not_found("file", spec.input_file_id, "input_file_id")
        return await _create(local, spec, raw)
    finally:
        held.release()


async def _create(local: Local, spec: CreateBatch, raw: bytes) -> Response:
    store, gw = local.store, local.gw
    record = jobs.new_batch("batch_" + secrets.token_hex(12), local.owner, endpoint=spec.endpoint,
                            input_file_id=spec.input_file_id, metadata=spec.metadata, model=None,
                            output_expires_s=spec.output_expires_after.seconds if spec.output_expires_after else None,
                            now=int(time.time()))
    await store.add([record])
    try:
        total = await _store_lines(local, record, raw, spec.endpoint)
    except BaseException as exc:  # nothing of it may run: gone, as if never made (failed if the delete fails)
        await store.delete(BATCH, record.id, local.owner)
        if isinstance(exc, lines.InputError):
            raise APIError(400, f"The input file does not fit this batch. {exc}", param="input_file_id",
                           code=exc.code) from None
        raise
    record = await jobs.start(store, record, total)
    worker = gw.batch_worker
    if worker is not None:
        worker.wake()
    return JSONResponse(jobs.show(record.data))


async def _store_lines(local: Local, record: Record, raw: bytes, endpoint: str) -> int:
    """The input file's lines, stored for the workers (with the owner: the key their requests run as)."""
    settings, store = local.gw.config.storage, local.store
    batch: list[Line] = []
    total = 0
    models: set[object] = set()
    async for line in lines.read_lines(raw, max_lines=settings.batches.max_lines,
                                       max_line_bytes=local.gw.config.gateway.max_body_bytes):
        if line.url != endpoint:
            raise lines.InputError(f"url {line.url} is not the batch's endpoint {endpoint}; a batch runs one "
                                   "endpoint.", line.number, "mismatched_url")
        models.add(line.body.get("model"))
        batch.append(Line(record.id, line.index, line.custom_id,
                          {"url": line.url, "body": line.body, "owner": local.owner}))
        total += 1
        if len(batch) >= ADD_LINES:
            await store.add_lines(record.id, batch)
            batch = []
    if batch:
        await store.add_lines(record.id, batch)
    if len(models) == 1 and isinstance(model := next(iter(models)), str):
        record.data["model"] = model
    return total


async def _settled(local: Local, record: Record) -> dict[str, object]:
    return jobs.show((await jobs.settle(local.store, record, local.gw.config.storage)).data)


@store_route
async def retrieve(request: Request) -> Response:
    local = Local(request)
    record = await local.record(BATCH, "batch", "batch_id")
    return JSONResponse(await _settled(local, record))


@store_route
async def list_batches(request: Request) -> Response:
    local = Local(request)
    after, limit, order = local.page()
    records, more = await local.store.list_page(BATCH, local.owner, after=after, limit=limit, order=order)
    data = [await _settled(local, r) for r in records]
    return JSONResponse({**list_object(records, more), "data": data})


@store_route
async def cancel(request: Request) -> Response:
    local = Local(request, writes=True)
    record = await local.record(BATCH, "batch", "batch_id")
    batch_id = record.id
    record = await jobs.settle(local.store, record, local.gw.config.storage)
    status = record.data["status"]
    if status in jobs.TERMINAL:
        if status == "cancelled":
            return JSONResponse(jobs.show(record.data))
        raise APIError(409, f"Batch {batch_id} is {status}; only a batch in progress can be cancelled.",
                       param="batch_id", code="batch_not_cancellable")
    record = await jobs.cancel(local.store, record, local.gw.config.storage)
    return JSONResponse(jobs.show(record.data))


def routes(gw: Gateway) -> list[BaseRoute]:
    return [Route("/v1/batches", create, methods=["POST"]), Route("/v1/batches", list_batches, methods=["GET"]),
            Route("/v1/batches/{batch_id}", retrieve, methods=["GET"]),
            Route("/v1/batches/{batch_id}/cancel", cancel, methods=["POST"])]
