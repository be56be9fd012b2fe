"""`POST /v1/completions`: raw-prompt completions, validated and forwarded."""

from __future__ import annotations

from typing import Any

from vlgate.gateway.apis.openai import completion, schemas
from vlgate.gateway.apis.openai.models import check_model
from vlgate.gateway.endpoint.context import RequestContext
from vlgate.gateway.gateway import Gateway
from vlgate.gateway.routing.affinity import prompt_affinity


async def prepare_completion(gw: Gateway, ctx: RequestContext, body: dict[str, Any]) -> None:
    schemas.validate(schemas.CompletionRequest, body)
    check_model(gw, body)
    ctx.finish = completion.complete_text
    ctx.affinity = prompt_affinity(body.get("prompt"))
