"""`GET /v1/models`, `/v1/models/{id}`, `/v1/presets`, and which model ids the POST routes accept."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from vlgate.errors import APIError
from vlgate.gateway.gateway import Gateway, authorized


def check_model(gw: Gateway, body: dict[str, Any]) -> None:
    """The served model, an id a backend reports (drop-in names), or a preset's virtual model
    `<model>:<preset>` (handled by presets); else 404 naming the served ones."""
    served = gw.config.gateway.model
    model = body.get("model")
    if model is None or model == served:
        return
    if isinstance(model, str) and (model.startswith(served + ":") or model in gw.backend_models.ids()):
        return
    names = ", ".join(f"'{m}'" for m in [served, *gw.backend_models.ids()])
    raise APIError(404, f"The model '{model}' does not exist; this gateway serves {names} "
                   f"(see GET /v1/models).", param="model", code="model_not_found")


def model_ids(gw: Gateway) -> list[str]:
    """The served model, one virtual model per preset, then the ids and aliases the backends report."""
    served = gw.config.gateway.model
    ids = [served] + [f"{served}:{name}" for name in gw.presets.names()]
    return ids + [m for m in gw.backend_models.ids() if m not in ids]


def _model_card(gw: Gateway, model_id: str, anthropic: bool = False) -> dict[str, Any]:
    if anthropic:  # the anthropic SDK's ModelInfo
        created = datetime.fromtimestamp(int(gw.created), UTC).isoformat().replace("+00:00", "Z")
        return {"type": "model", "id": model_id, "display_name": model_id, "created_at": created,
                "lifecycle": "active"}
    return {"id": model_id, "object": "model", "created": int(gw.created), "owned_by": "vlgate"}


def _anthropic(request: Request) -> bool:
    """The anthropic SDK sends `anthropic-version` on every request: answer /v1/models in its shape."""
    return "anthropic-version" in request.headers


async def models(request: Request) -> Response:
    gw = authorized(request)
    ids = model_ids(gw)
    if _anthropic(request):
        return JSONResponse({"data": [_model_card(gw, i, True) for i in ids], "has_more": False,
                             "first_id": ids[0], "last_id": ids[-1]})
    return JSONResponse({"object": "list", "data": [_model_card(gw, i) for i in ids]})


async def model(request: Request) -> Response:
    gw = authorized(request)
    name = request.path_params["model"]
    if name not in model_ids(gw):
        raise APIError(404, f"The model '{name}' does not exist.", param="model", code="model_not_found")
    return JSONResponse(_model_card(gw, name, _anthropic(request)))


async def presets(request: Request) -> Response:
    gw = authorized(request)
    return JSONResponse({"object": "list", "data": gw.presets.describe(gw.config.gateway.model)})


def routes(gw: Gateway) -> list[BaseRoute]:
    return [
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/models/{model:path}", model, methods=["GET"]),
        Route("/v1/presets", presets, methods=["GET"]),
    ]
