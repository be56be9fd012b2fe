"""Stored responses, answered from the store: retrieve, delete, input items, cancel.

Each names the key that asks (`Local`): another key's response is exactly an unknown id (404).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from vlgate.errors import APIError
from vlgate.gateway.apis.responses import background
from vlgate.gateway.apis.responses.records import json_response, settle, show
from vlgate.gateway.endpoint.local import Local, store_route
from vlgate.gateway.gateway import Gateway
from vlgate.store.base import RESPONSE, RESPONSE_INPUT


@store_route
async def retrieve(request: Request) -> Response:
    local = Local(request)
    if request.query_params.get("stream", "false").lower() not in ("false", "0"):
        raise APIError(400, "Streaming a stored response again is not supported here: retrieve it without "
                       "'stream'.", param="stream", code="unsupported_parameter")
    record = await settle(local.store, await local.record(RESPONSE, "response", "response_id"))
    return json_response(show(record.data))


@store_route
async def delete(request: Request) -> Response:
    """The response and its input items; a background run of it stops."""
    local = Local(request, writes=True)
    id = await local.delete(RESPONSE, "response", "response_id")
    background.stop_local(id)
    return json_response({"id": id, "object": "response", "deleted": True})


@store_route
async def input_items(request: Request) -> Response:
    local = Local(request)
    record = await local.record(RESPONSE, "response", "response_id")
    return json_response(await local.children(RESPONSE_INPUT, record.id, lambda r: show(r.data)))


@store_route
async def cancel(request: Request) -> Response:
    local = Local(request, writes=True)
    return json_response(await background.cancel(local.store, await local.record(RESPONSE, "response", "response_id")))


def routes(gw: Gateway) -> list[BaseRoute]:
    return [
        Route("/v1/responses/{response_id}", retrieve, methods=["GET"]),
        Route("/v1/responses/{response_id}", delete, methods=["DELETE"]),
        Route("/v1/responses/{response_id}/input_items", input_items, methods=["GET"]),
        Route("/v1/responses/{response_id}/cancel", cancel, methods=["POST"]),
    ]
