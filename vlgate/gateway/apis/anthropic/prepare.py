"""`POST /v1/messages` and `/v1/messages/count_tokens` (Anthropic Messages API) for the anthropic SDK.

Validated in Anthropic's rules, images normalized (base64 and URL sources, also inside tool_result),
forwarded to llama-server's own Anthropic routes; every error leaves in Anthropic's shape. Auth takes
Anthropic's `x-api-key` header as well as `Authorization: Bearer` (see auth.py).
"""

from __future__ import annotations

from typing import Any

from vlgate.gateway.apis.anthropic.schemas import validate_count, validate_messages
from vlgate.gateway.apis.anthropic.stream import AnthropicStreamTap
from vlgate.gateway.apis.openai.models import check_model
from vlgate.gateway.apis.toolchoice import anthropic_tool_choice
from vlgate.gateway.endpoint.context import RequestContext
from vlgate.gateway.gateway import Gateway
from vlgate.gateway.routing.affinity import chat_affinity


async def prepare_messages(gw: Gateway, ctx: RequestContext, body: dict[str, Any]) -> None:
    validate_messages(body)
    check_model(gw, body)
    images = await gw.images.normalize_body(body)
    ctx.images = len(images)  # usage per key
    if images or anthropic_tool_choice(body):
        ctx.body_changed = True
    if body.get("stream") is True:
        ctx.stream_tap = AnthropicStreamTap()
    system = body.get("system")
    if isinstance(system, list):
        system = "".join(block.get("text", "") for block in system)
    messages = ([{"role": "system", "content": system}] if system else []) + body["messages"]
    ctx.affinity = chat_affinity(messages, [i.sha256 for i in images])


async def prepare_count(gw: Gateway, ctx: RequestContext, body: dict[str, Any]) -> None:
    validate_count(body)
    check_model(gw, body)
    if await gw.images.normalize_body(body):
        ctx.body_changed = True
