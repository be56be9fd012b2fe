"""`POST /v1/responses` (OpenAI Responses API): validated, presets and images applied, answers completed.

Forwarded to llama-server's own `/v1/responses` (stateless there); `text.format` is mapped to the
`response_format` the backend honours, and every answer or stream event is completed so the openai SDK's
strict validation and its `responses.stream()` / `responses.parse()` helpers accept it. Stored responses,
their chains and conversations are the gateway's (state.py); `background: true` runs in-process
(background.py).
"""

from __future__ import annotations

import json
from typing import Any

from vlgate.errors import APIError
from vlgate.gateway.apis.openai.completion import rewrite_object
from vlgate.gateway.apis.openai.models import check_model
from vlgate.gateway.apis.responses import background
from vlgate.gateway.apis.responses.completion import (
    Echo,
    Finisher,
    complete_response,
    complete_response_bytes,
    output_text,
)
from vlgate.gateway.apis.responses.schemas import responses_format, validate_responses
from vlgate.gateway.apis.responses.state import State, load_state
from vlgate.gateway.apis.responses.stream import ResponsesStreamRewriter
from vlgate.gateway.apis.toolchoice import responses_tool_choice
from vlgate.gateway.endpoint.context import RequestContext
from vlgate.gateway.gateway import Gateway
from vlgate.gateway.presetrun.postprocess import resolve_preset
from vlgate.gateway.routing.affinity import chat_affinity
from vlgate.images.types import ImageInfo
from vlgate.presets import PresetRun
from vlgate.presets.apply import RESPONSES


async def prepare_responses(gw: Gateway, ctx: RequestContext, body: dict[str, Any]) -> None:
    validate_responses(body)
    if background.take_prepared(body):  # a background run's own call: prepared when it was accepted
        ctx.body_changed = True
        ctx.finish = lambda data: complete_response_bytes(data, Echo.of(body))
        ctx.affinity = chat_affinity(_as_messages(body), [])
        return
    check_model(gw, body)
    echo = Echo.of(body)  # what the client asked for, before the gateway rewrites it for the backend
    state = await load_state(gw, ctx.key, body, echo)  # None: nothing stored or loaded (no store call)
    if state is not None:
        ctx.body_changed = True
    if responses_format(body) | responses_tool_choice(body):
        ctx.body_changed = True
    run = resolve_preset(gw, body, RESPONSES)
    if run is not None:
        ctx.body_changed = True
        if run.runs_itself:  # several model calls, or a drawn overlay: the chat route runs those
            raise APIError(400, f"Preset '{run.name}' runs several steps (or draws an overlay), which "
                           "/v1/responses does not do; send it to /v1/chat/completions.", param="preset",
                           code="unsupported_preset")
    # a history's images were normalized when they were stored (the gateway's own encoding): not again
    images = await gw.images.normalize_body(body if state is None else {"input": state.new_input(body)})
    ctx.images = len(images)  # usage per key
    if images:
        ctx.body_changed = True
    echo.cap = body.get("max_output_tokens")  # after the preset's defaults: what the backend was given
    if run is not None:
        echo.finish = _preset_finisher(run, images)
    ctx.affinity = chat_affinity(_as_messages(body), [i.sha256 for i in images])
    if state is None:
        if body.get("stream") is True:
            ctx.stream_tap = ResponsesStreamRewriter(echo)
        else:
            ctx.finish = lambda data: complete_response_bytes(data, echo)
        return
    state.take_input(body)
    if state.background:
        ctx.respond = await background.accept(gw, ctx, body, echo, state)
        return
    _stored(ctx, body, echo, state)


def _stored(ctx: RequestContext, body: dict[str, Any], echo: Echo, state: State) -> None:
    """The answer is completed as usual, then stored before its end reaches the client."""
    if body.get("stream") is True:
        ctx.stream_tap = state.tap = ResponsesStreamRewriter(echo, hold_final=True)
    else:
        ctx.finish = lambda data: rewrite_object(data, lambda response: state.finish(complete_response(response, echo)))
    ctx.persist = state.persist


def _preset_finisher(run: PresetRun, images: list[ImageInfo]) -> Finisher:
    """The parsed result goes in `vlgate` on the response object (and so on the final event)."""

    def finish(response: dict[str, Any], echo: Echo) -> None:
        truncated = response.get("status") == "incomplete"
        ext = run.stream_extension(output_text(response), images, "length" if truncated else None)
        response["vlgate"] = ext
        if run.json_content:  # response_format json_object with a structured preset: the JSON is the result
            for item in response.get("output") or ():
                for part in item.get("content") or () if item.get("type") == "message" else ():
                    if part.get("type") == "output_text":
                        part["text"] = json.dumps(ext)

    return finish


def _as_messages(body: dict[str, Any]) -> list[Any]:
    """The conversation as chat-like messages, for the KV-cache affinity key."""
    items = body["input"]
    messages: list[Any] = [{"role": "system", "content": body["instructions"]}] if body.get("instructions") else []
    if isinstance(items, str):
        return [*messages, {"role": "user", "content": items}]
    for item in items:
        if isinstance(item, dict) and "role" in item:
            content = item.get("content")
            if isinstance(content, list):  # the affinity key reads chat text parts
                content = [{"type": "text", "text": p.get("text")} for p in content
                           if isinstance(p, dict) and p.get("type") in ("input_text", "output_text")]
            messages.append({"role": item["role"], "content": content})
    return messages


async def prepare_responses_count(gw: Gateway, ctx: RequestContext, body: dict[str, Any]) -> None:
    """`/v1/responses/input_tokens`: a chain or a conversation counts too (nothing is stored)."""
    validate_responses(body)
    check_model(gw, body)
    given = body.get("store")
    body["store"] = False  # a count stores nothing
    state = await load_state(gw, ctx.key, body, Echo.of(body))
    if given is None:
        del body["store"]
    else:
        body["store"] = given
    images = await gw.images.normalize_body(body if state is None else {"input": state.new_input(body)})
    ctx.body_changed = state is not None or bool(images)
