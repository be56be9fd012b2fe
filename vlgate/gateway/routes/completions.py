"""`POST /v1/completions`: raw-prompt completions, validated and forwarded."""

from __future__ import annotations

from typing import Any

from starlette.routing import BaseRoute, Route

from vlgate.gateway import fidelity, schemas
from vlgate.gateway.affinity import prompt_affinity
from vlgate.gateway.context import RequestContext
from vlgate.gateway.proxy import ProxyEndpoint
from vlgate.gateway.routes.models import check_model
from vlgate.gateway.state import Gateway


async def prepare_completion(gw: Gateway, ctx: RequestContext, body: dict[str, Any]) -> None:
    schemas.validate(schemas.CompletionRequest, body)
    check_model(gw, body)
    ctx.finish = fidelity.complete_text
    ctx.affinity = prompt_affinity(body.get("prompt"))


def routes(gw: Gateway) -> list[BaseRoute]:
    endpoint = ProxyEndpoint(gw, "completions", "/v1/completions", prepare_completion)
    return [Route("/v1/completions", endpoint, methods=["POST"])]
