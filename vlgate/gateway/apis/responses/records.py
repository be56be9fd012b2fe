"""Stored responses as records: retention, what a client is shown, and the lease of background work.

A background response in progress carries `_lease` (unix seconds, renewed by the gateway running it). A
record still queued or in progress whose lease ran out belongs to a gateway that died or restarted: it is
settled as `failed` the first time anyone reads it (every replica can, on one shared database), so a
restart never leaves a response in progress forever (background.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import orjson
from starlette.responses import Response

from vlgate.errors import APIError
from vlgate.store.base import RESPONSE, Record, Store

LEASE = "_lease"  # private fields start with "_": kept in the store, never shown
RUNNING = ("queued", "in_progress")
RESTARTED = {"code": "server_error", "message": "The gateway running this background response stopped before it "
             "finished (restarted or lost); create it again."}


def expires(now: float, keep_s: float) -> float | None:
    """A record's `expires_at` under a retention setting (0: kept until deleted)."""
    return now + keep_s if keep_s > 0 else None


def show(data: dict[str, Any]) -> dict[str, Any]:
    """The object as the API shows it (private fields dropped)."""
    return {k: v for k, v in data.items() if not k.startswith("_")}


def previous_not_found(id: str) -> APIError:
    """OpenAI's answer for an unknown `previous_response_id` (and so for another key's, or one stored with
    `store: false`): nothing tells them apart."""
    return APIError(400, f"Previous response with id '{id[:100]}' not found.", param="previous_response_id",
                    code="previous_response_not_found")


async def settle(store: Store, record: Record, now: Callable[[], float] = time.time) -> Record:
    """A background response whose lease ran out is failed (compare-and-set: a live gateway that renews
    or finishes it first wins); returns the record as it now stands."""
    data = record.data
    lease = data.get(LEASE)
    if data.get("status") not in RUNNING or not isinstance(lease, (int, float)) or lease >= now():
        return record
    failed = {**show(data), "status": "failed", "error": RESTARTED}
    settled = Record(RESPONSE, record.id, record.owner, failed, record.created_at, record.parent, record.expires_at)
    if await store.replace_if(settled, [data["status"]]):
        return settled
    again = await store.get(RESPONSE, record.id, record.owner)
    return again or record


def json_response(value: Any) -> Response:
    return Response(orjson.dumps(value), media_type="application/json")
