"""`POST /v1/chat/completions`: validation, model, presets, images and affinity before forwarding."""

from __future__ import annotations

from typing import Any

from vlgate.gateway.apis.openai import completion, schemas
from vlgate.gateway.apis.openai.models import check_model
from vlgate.gateway.apis.toolchoice import pin_named_tool
from vlgate.gateway.endpoint.context import RequestContext
from vlgate.gateway.gateway import Gateway
from vlgate.gateway.presetrun.pipelines import PresetResponder, source_image_url
from vlgate.gateway.presetrun.postprocess import attach_preset, resolve_preset
from vlgate.gateway.routing.affinity import chat_affinity


async def prepare_chat(gw: Gateway, ctx: RequestContext, body: dict[str, Any]) -> None:
    schemas.validate(schemas.ChatCompletionRequest, body)
    check_model(gw, body)
    ctx.finish = completion.complete_chat
    if pin_named_tool(body):
        ctx.body_changed = True
    run = resolve_preset(gw, body)
    if run is not None:
        ctx.body_changed = True
    source = source_image_url(body) if run is not None and run.runs_itself else None
    images = await gw.images.normalize_body(body)
    ctx.images = len(images)
    if images:
        ctx.body_changed = True
    if run is not None and run.runs_itself:  # pipelines and overlays: the gateway runs the steps itself
        ctx.respond = PresetResponder(gw, ctx, run, body, images, source).respond
    elif run is not None:
        attach_preset(ctx, run, images, body)
    ctx.affinity = chat_affinity(body["messages"], [i.sha256 for i in images])
