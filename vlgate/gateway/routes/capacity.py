"""`GET /slots`: this gateway's free capacity in llama-server's shape, so a node is a valid backend.

An upper `vlgate serve` polls a backend's `/slots` for its slot count and busy slots; a node
gateway answers with one entry per slot of its ready backends (busy: running + queued here), and
none while it drains, so the tier above balances by the node's real load.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from vlgate.gateway.fleet.capacity import slots_document
from vlgate.gateway.gateway import Gateway, authorized


async def slots(request: Request) -> Response:
    gw = authorized(request)
    load = gw.node_load()
    return JSONResponse(slots_document(load), headers={"x-vlgate-queued": str(load.queued)})


def routes(gw: Gateway) -> list[BaseRoute]:
    return [Route("/slots", slots, methods=["GET"])]
