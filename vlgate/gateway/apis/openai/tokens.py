"""Token counting and llama-server's template/tokenizer utilities, authenticated and balanced like chat.

`POST /v1/chat/completions/input_tokens` and `POST /apply-template`
load the request's images to count them, so they go through image normalization first (the backend
would otherwise fetch URLs itself). `POST /tokenize` and `/detokenize` carry only text and token ids.
"""

from __future__ import annotations

from typing import Any

from vlgate.gateway.apis import caps
from vlgate.gateway.apis.openai import schemas
from vlgate.gateway.apis.openai.models import check_model
from vlgate.gateway.apis.openai.schemas import _Open
from vlgate.gateway.endpoint.context import RequestContext
from vlgate.gateway.gateway import Gateway


class TokenizeRequest(_Open):
    item_caps = caps.TOKENIZE
    content: str | list[str | int]
    add_special: bool | None = None
    parse_special: bool | None = None
    with_pieces: bool | None = None


class DetokenizeRequest(_Open):
    item_caps = caps.DETOKENIZE
    tokens: list[int]


async def _images(gw: Gateway, ctx: RequestContext, body: dict[str, Any]) -> None:
    if await gw.images.normalize_body(body):
        ctx.body_changed = True


async def prepare_chat_count(gw: Gateway, ctx: RequestContext, body: dict[str, Any]) -> None:
    schemas.validate(schemas.ChatCompletionRequest, body)
    check_model(gw, body)
    await _images(gw, ctx, body)


async def prepare_tokenize(gw: Gateway, ctx: RequestContext, body: dict[str, Any]) -> None:
    schemas.validate(TokenizeRequest, body)


async def prepare_detokenize(gw: Gateway, ctx: RequestContext, body: dict[str, Any]) -> None:
    schemas.validate(DetokenizeRequest, body)
