"""What each OpenAI route does to a request before it is forwarded, and the small GET routes."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from vlgate import fidelity, schemas
from vlgate.errors import APIError
from vlgate.gateway import Gateway, RequestContext
from vlgate.metrics import CONTENT_TYPE
from vlgate.presets_glue import attach_preset


def check_model(gw: Gateway, body: dict[str, Any]) -> None:
    """The served model (or a preset's virtual model `<model>:<preset>`, handled by presets); else 404."""
    served = gw.config.gateway.model
    model = body.get("model")
    if model is None or model == served:
        return
    if isinstance(model, str) and model.startswith(served + ":"):
        return
    raise APIError(404, f"The model '{model}' does not exist; this gateway serves '{served}' "
                   f"(see GET /v1/models).", param="model", code="model_not_found")


def affinity_key(messages: list[Any], image_hashes: list[str]) -> object | None:
    """Requests sharing system prompt + first user turn + images share llama-server's KV cache prefix."""
    key: list[object] = []
    for message in messages:
        if not isinstance(message, dict):
            return None
        content = message.get("content")
        if isinstance(content, list):
            content = tuple(p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text")
        key.append((message.get("role"), content))
        if message.get("role") == "user":
            break
    return hash((tuple(key), tuple(image_hashes))) if key else None


async def prepare_chat(gw: Gateway, ctx: RequestContext, body: dict[str, Any]) -> None:
    schemas.validate(schemas.ChatCompletionRequest, body)
    check_model(gw, body)
    ctx.finish = fidelity.complete_chat
    run = gw.presets.resolve(body, body.get("model") or gw.config.gateway.model, gw.config.gateway.model)
    if run is not None:
        ctx.body_changed = True
        problem = gw.structure_tokens_problem() if run.parsers else None
        if problem:
            raise APIError(503, f"Structured preset '{run.name}' is unavailable: {problem}",
                           code="preset_unavailable", headers={"Retry-After": "60"})
    images = await gw.images.normalize_body(body)
    if images:
        ctx.body_changed = True
    if run is not None:
        attach_preset(ctx, run, images, body)
    ctx.affinity = affinity_key(body["messages"], [i.sha256 for i in images])


async def prepare_completion(gw: Gateway, ctx: RequestContext, body: dict[str, Any]) -> None:
    schemas.validate(schemas.CompletionRequest, body)
    check_model(gw, body)
    ctx.finish = fidelity.complete_text
    prompt = body.get("prompt")
    ctx.affinity = hash(prompt[:256]) if isinstance(prompt, str) else None


async def prepare_embedding(gw: Gateway, ctx: RequestContext, body: dict[str, Any]) -> None:
    schemas.validate(schemas.EmbeddingRequest, body)
    check_model(gw, body)


# -- GET routes ------------------------------------------------------------------------------------

def _gw(request: Request) -> Gateway:
    return request.app.state.gateway


def _authorized(request: Request) -> Gateway:
    """The gateway, once the request's API key checks out (the /v1 GET routes need one too)."""
    gw = _gw(request)
    gw.keys.check(request.headers.get("authorization", "").encode("latin-1") or None)
    return gw


def model_ids(gw: Gateway) -> list[str]:
    """The served model, then one virtual model per preset."""
    served = gw.config.gateway.model
    return [served] + [f"{served}:{name}" for name in gw.presets.names()]


def _model_card(gw: Gateway, model_id: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": int(gw.created), "owned_by": "vlgate"}


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def ready(request: Request) -> Response:
    gw = _gw(request)
    b = gw.balancer
    ok = not b.draining and bool(b.ready_backends())
    body = {
        "status": "ready" if ok else "unavailable",
        "draining": b.draining,
        "reason": "" if ok else b.not_ready_reason(),
        "in_flight": b.in_flight(),
        "queued": b.queued,
        "backends": [_describe(gw, x) for x in gw.backends],
    }
    return JSONResponse(body, status_code=200 if ok else 503)


def _describe(gw: Gateway, backend: Any) -> dict[str, Any]:
    info = backend.describe()
    check = gw.token_checks.get(backend.name)
    if check is not None:
        info["structure_tokens"] = {"ok": check.ok, "reason": check.reason}
    return info


async def metrics(request: Request) -> Response:
    return Response(_gw(request).metrics.render(), media_type=CONTENT_TYPE)


async def models(request: Request) -> Response:
    gw = _authorized(request)
    return JSONResponse({"object": "list", "data": [_model_card(gw, i) for i in model_ids(gw)]})


async def model(request: Request) -> Response:
    gw = _authorized(request)
    name = request.path_params["model"]
    if name not in model_ids(gw):
        raise APIError(404, f"The model '{name}' does not exist.", param="model", code="model_not_found")
    return JSONResponse(_model_card(gw, name))


async def presets(request: Request) -> Response:
    gw = _authorized(request)
    return JSONResponse({"object": "list", "data": gw.presets.describe(gw.config.gateway.model)})
