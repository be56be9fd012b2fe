"""The Conversations API, answered from the store in OpenAI's shapes.

A conversation is a record with its metadata; its items are records whose parent it is, kept in the order
they were added (a response with `conversation` appends its new input and output items: responses/state.py).
Items are validated as a Responses request's input items and their images normalized once, when added, so
every later response that reads them sends the backend an image the gateway already made. A create call
adds at most 20 items (OpenAI's limit); lists page with `after`, `limit`, `order`. Another key's
conversation, or an item of another conversation, is exactly an unknown id (404).
"""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from vlgate.errors import APIError
from vlgate.gateway.apis.responses.items import as_stored, check_metadata, new_id
from vlgate.gateway.apis.responses.records import expires, json_response, show
from vlgate.gateway.apis.responses.schemas import validate_items
from vlgate.gateway.endpoint.local import Local, list_object, not_found, store_route
from vlgate.gateway.gateway import Gateway
from vlgate.store.base import CONVERSATION, CONVERSATION_ITEM, Record

MAX_ITEMS_PER_CALL = 20


async def _items(local: Local, raw: Any, conversation: str, now: float) -> list[Record]:
    """New item records from a request's `items` (validated, images normalized)."""
    if not isinstance(raw, list):
        raise APIError(400, "Invalid type for 'items': expected an array of input items.", param="items",
                       code="invalid_type")
    if len(raw) > MAX_ITEMS_PER_CALL:
        raise APIError(400, f"Invalid 'items': array too long. Expected an array with maximum length "
                       f"{MAX_ITEMS_PER_CALL}, but got an array with length {len(raw)} instead.", param="items",
                       code="array_above_max_length")
    validate_items(raw, "items")
    try:
        await local.gw.images.normalize_body({"input": raw})
    except APIError as exc:  # the normalizer names the places of a Responses body's `input`
        param = exc.param.replace("input[", "items[", 1) if exc.param else None
        raise APIError(exc.status, exc.message, param=param, code=exc.code) from None
    until = expires(now, local.gw.config.storage.retention.conversations_s)
    return [Record(CONVERSATION_ITEM, item["id"], local.owner, item, int(now), conversation, until)
            for item in map(as_stored, raw)]


@store_route
async def create(request: Request) -> Response:
    local = Local(request, writes=True)
    body = await local.json()
    now = time.time()
    id = new_id("conv")
    metadata = check_metadata(body.get("metadata"))
    data = {"id": id, "object": "conversation", "created_at": int(now), "metadata": metadata}
    items = await _items(local, body.get("items") or [], id, now)
    until = expires(now, local.gw.config.storage.retention.conversations_s)
    await local.store.add([Record(CONVERSATION, id, local.owner, data, int(now), expires_at=until), *items])
    return json_response(data)


@store_route
async def retrieve(request: Request) -> Response:
    record = await Local(request).record(CONVERSATION, "conversation", "conversation_id")
    return json_response(show(record.data))


@store_route
async def update(request: Request) -> Response:
    """Replaces the metadata (required, as OpenAI's)."""
    local = Local(request, writes=True)
    body = await local.json()
    record = await local.record(CONVERSATION, "conversation", "conversation_id")
    if "metadata" not in body:
        raise APIError(400, "Missing required parameter: 'metadata'.", param="metadata",
                       code="missing_required_parameter")
    record.data = {**record.data, "metadata": check_metadata(body["metadata"])}
    await local.store.save(record)
    return json_response(show(record.data))


@store_route
async def delete(request: Request) -> Response:
    """The conversation and all its items."""
    local = Local(request, writes=True)
    id = await local.delete(CONVERSATION, "conversation", "conversation_id")
    return json_response({"id": id, "object": "conversation.deleted", "deleted": True})


@store_route
async def list_items(request: Request) -> Response:
    local = Local(request)
    record = await local.record(CONVERSATION, "conversation", "conversation_id")
    return json_response(await local.children(CONVERSATION_ITEM, record.id, lambda r: show(r.data)))


@store_route
async def create_items(request: Request) -> Response:
    local = Local(request, writes=True)
    body = await local.json()
    record = await local.record(CONVERSATION, "conversation", "conversation_id")
    if not body.get("items"):
        raise APIError(400, "Missing required parameter: 'items' (1 to 20 input items).", param="items",
                       code="missing_required_parameter")
    items = await _items(local, body["items"], record.id, time.time())
    await local.store.add(items)
    return json_response(list_object(items, False, lambda r: show(r.data)))


async def _item(local: Local) -> tuple[Record, Record]:
    conversation = await local.record(CONVERSATION, "conversation", "conversation_id")
    id = local.param("item_id")
    item = await local.store.get(CONVERSATION_ITEM, id, local.owner)
    if item is None or item.parent != conversation.id:
        raise not_found("item", id, param="item_id")
    return conversation, item


@store_route
async def retrieve_item(request: Request) -> Response:
    _, item = await _item(Local(request))
    return json_response(show(item.data))


@store_route
async def delete_item(request: Request) -> Response:
    """Answers the conversation (as OpenAI's)."""
    local = Local(request, writes=True)
    conversation, item = await _item(local)
    await local.store.delete(CONVERSATION_ITEM, item.id, local.owner)
    return json_response(show(conversation.data))


def routes(gw: Gateway) -> list[BaseRoute]:
    one, items, item = "/v1/conversations/{conversation_id}", "/v1/conversations/{conversation_id}/items", \
        "/v1/conversations/{conversation_id}/items/{item_id}"
    return [
        Route("/v1/conversations", create, methods=["POST"]),
        Route(one, retrieve, methods=["GET"]),
        Route(one, update, methods=["POST"]),
        Route(one, delete, methods=["DELETE"]),
        Route(items, list_items, methods=["GET"]),
        Route(items, create_items, methods=["POST"]),
        Route(item, retrieve_item, methods=["GET"]),
        Route(item, delete_item, methods=["DELETE"]),
    ]
