"""`background: true`: answered at once (`queued`), run in-process, polled with GET, cancelled with POST.

The work takes the client's own road: an in-process call of `POST /v1/responses` (endpoint/internal.py)
with the prepared request (history, preset and images already applied, not again: the call carries a
one-time token; `store: false`, so the call itself stores nothing) as the key that asked, so key limits,
admission, retries and accounting apply. Its result
replaces the record only while the record is still in progress (compare-and-set), so a cancel racing the
completion ends one way: cancelled (the result is dropped) or finished (the cancel answers the finished
response). While it runs, the gateway renews the record's lease every third of `storage.batches.lease_s`;
a renewal that finds the record no longer in progress (cancelled or deleted, on any replica) drops the
backend call. A drain waits for background work as for requests (`Gateway.admitted`).

After a restart or a crash, background responses left queued or in progress are failed, not re-run (the
prepared request, images included, is not kept): whoever reads one once its lease ran out settles it as
`failed` (records.settle).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.types import Send

from vlgate.errors import APIError
from vlgate.gateway.apis.responses.completion import Echo, complete_response
from vlgate.gateway.apis.responses.records import LEASE, RUNNING, settle, show
from vlgate.gateway.apis.responses.state import State
from vlgate.gateway.endpoint.context import RequestContext
from vlgate.gateway.endpoint.internal import Answer, Caller, call
from vlgate.gateway.endpoint.local import store_errors
from vlgate.gateway.endpoint.respond import send_json_bytes
from vlgate.gateway.gateway import Gateway
from vlgate.store.base import RESPONSE, Record, Store, StoreError

log = logging.getLogger("vlgate.gateway.responses")

PATH = "/v1/responses"
PREPARED = "vlgate_prepared"  # marks a run's own call (a one-time token only this process knows)
_STATE_FIELDS = ("background", "previous_response_id", "conversation", "store", "stream")
_running: dict[str, asyncio.Task[None]] = {}  # response id -> its run in this process
_prepared: set[str] = set()  # tokens of runs' calls not yet made
# ResponseError.code's values (the SDK validates them); a gateway error code outside them is mapped
_IMAGE_CODES = {"invalid_image", "invalid_image_format", "invalid_base64_image", "invalid_image_url",
                "image_too_large", "image_too_small", "image_parse_error", "invalid_image_mode",
                "image_file_too_large", "unsupported_image_media_type", "empty_image_file", "failed_to_download_image"}


async def accept(gw: Gateway, ctx: RequestContext, body: dict[str, Any], echo: Echo,
                 state: State) -> Callable[[Send], Awaitable[int]]:
    """Store the response as `queued`, start its run, and answer it (the endpoint's `respond`)."""
    lease_s = gw.config.storage.batches.lease_s
    now = time.time()
    queued = echo.skeleton({}, "queued")
    records = state.response_records({**queued, LEASE: now + lease_s}, now)
    with store_errors():
        await state.store.add(records)
    token = secrets.token_hex(16)
    _prepared.add(token)
    inner = orjson.dumps({**{k: v for k, v in body.items() if k not in _STATE_FIELDS}, "store": False,
                          PREPARED: token})
    run = Run(gw, state, echo, records[0], lease_s)
    gw.admitted += 1  # a drain waits for it as for a request (released when the run ends)
    task = asyncio.get_running_loop().create_task(run.run(inner, Caller(ctx.key, "background"), ctx.id))
    _running[state.id] = task

    def ended(_task: asyncio.Task[None]) -> None:
        _running.pop(state.id, None)
        _prepared.discard(token)  # a run cancelled before its call

    task.add_done_callback(ended)
    answer = orjson.dumps(queued)
    headers = ctx.dialect.id_headers(ctx.id.encode())

    async def respond(send: Send) -> int:
        await send_json_bytes(send, 200, answer, headers)
        return 200

    return respond


class Run:
    """One background response's run: in progress, renewed, then finished (or dropped)."""

    def __init__(self, gw: Gateway, state: State, echo: Echo, record: Record, lease_s: float) -> None:
        self.gw, self.state, self.echo, self.lease_s = gw, state, echo, lease_s
        self.record = record  # the queued record (its data is replaced as the run goes)

    async def _replace(self, data: dict[str, Any], statuses: tuple[str, ...]) -> bool:
        r = self.record
        return await self.state.store.replace_if(Record(RESPONSE, r.id, r.owner, data, r.created_at, None,
                                                        r.expires_at), statuses)

    async def run(self, inner: bytes, caller: Caller, request_id: str) -> None:
        running = {**self.record.data, "status": "in_progress", LEASE: time.time() + self.lease_s}
        try:
            if not await self._replace(running, ("queued",)):
                return  # cancelled or deleted before it started
            work = asyncio.ensure_future(call(self.gw.api_endpoints[PATH], PATH, inner, caller, request_id=request_id))
            try:
                while not work.done():
                    await asyncio.wait({work}, timeout=self.lease_s / 3)
                    if not work.done():
                        running[LEASE] = time.time() + self.lease_s
                        if not await self._replace(running, ("in_progress",)):
                            return  # cancelled or deleted elsewhere: the backend call is dropped below
            finally:
                work.cancel()
            final = self._final(work.result())
            if await self._replace(final, ("in_progress",)):
                records = await self.state.conversation_records(final, time.time())
                if records:
                    await self.state.store.add(records)
        except StoreError as exc:
            log.error("background response %s: the store failed: %s", self.state.id, exc)
        except Exception:  # a bug of ours: the response fails instead of staying in progress
            log.exception("background response %s failed unexpectedly", self.state.id)
            failed = {**show(running), "status": "failed",
                      "error": {"code": "server_error", "message": "Internal gateway error."}}
            try:
                await self._replace(failed, RUNNING)
            except StoreError:
                pass
        finally:
            self.gw.admitted -= 1

    def _final(self, answer: Answer) -> dict[str, Any]:
        """The finished response object: the backend's answer with the client's settings, or a failure."""
        body = answer.json() if answer.body else None
        base = show(self.record.data)
        if answer.status == 200 and isinstance(body, dict):
            body.update((k, v) for k, v in self.echo.fields.items() if k != "model")  # the client's, not the call's
            body["created_at"] = base["created_at"]
            return complete_response(body, self.echo)
        error = body.get("error") if isinstance(body, dict) else None
        error = error if isinstance(error, dict) else {}
        message = str(error.get("message") or f"The model call failed with status {answer.status}.")
        return {**base, "status": "failed", "error": {"code": _error_code(answer.status, error.get("code")),
                                                      "message": message}}


def _error_code(status: int, code: Any) -> str:
    if isinstance(code, str) and code in _IMAGE_CODES:
        return code
    if status == 429:
        return "rate_limit_exceeded"
    if status >= 500:
        return "server_error"
    if isinstance(code, str) and "image" in code:
        return "invalid_image"
    return "invalid_prompt"


def take_prepared(body: dict[str, Any]) -> bool:
    """True for a background run's own call (its request was prepared, images included, when accepted:
    it is not prepared again). The token is removed from the body and can serve once."""
    token = body.pop(PREPARED, None)
    if isinstance(token, str) and token in _prepared:
        _prepared.discard(token)
        return True
    return False


def stop_local(response_id: str) -> None:
    """Cancel the run of `response_id` if this process runs it (its backend call drops at once)."""
    task = _running.get(response_id)
    if task is not None:
        task.cancel()


async def cancel(store: Store, record: Record) -> dict[str, Any]:
    """POST /v1/responses/{id}/cancel: a queued or running background response becomes `cancelled`; one
    already finished is answered as it stands (the race with its completion had one winner)."""
    record = await settle(store, record)
    if record.data.get("background") is not True:
        raise APIError(400, "Only responses created with 'background': true can be cancelled.",
                       code="invalid_request")
    if record.data.get("status") in RUNNING:
        cancelled = {**show(record.data), "status": "cancelled"}
        with store_errors():
            done = await store.replace_if(Record(RESPONSE, record.id, record.owner, cancelled, record.created_at,
                                                 None, record.expires_at), RUNNING)
            if done:
                stop_local(record.id)
                return cancelled
            again = await store.get(RESPONSE, record.id, record.owner)
        record = again or record
    return show(record.data)
