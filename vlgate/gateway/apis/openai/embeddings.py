"""`POST /v1/embeddings`: a pass-through (a backend without `--embeddings` answers its own 501)."""

from __future__ import annotations

from typing import Any

from vlgate.gateway.apis.openai import schemas
from vlgate.gateway.apis.openai.models import check_model
from vlgate.gateway.endpoint.context import RequestContext
from vlgate.gateway.gateway import Gateway


async def prepare_embedding(gw: Gateway, ctx: RequestContext, body: dict[str, Any]) -> None:
    schemas.validate(schemas.EmbeddingRequest, body)
    check_model(gw, body)
