"""`GET /v1/models`, `/v1/models/{id}`, `/v1/presets`, and which model ids the POST routes accept."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from vlgate.errors import APIError
from vlgate.gateway.state import Gateway, authorized


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


def model_ids(gw: Gateway) -> list[str]:
    """The served model, then one virtual model per preset."""
    served = gw.config.gateway.model
    return [served] + [f"{served}:{name}" for name in gw.presets.names()]


def _model_card(gw: Gateway, model_id: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": int(gw.created), "owned_by": "vlgate"}


async def models(request: Request) -> Response:
    gw = authorized(request)
    return JSONResponse({"object": "list", "data": [_model_card(gw, i) for i in model_ids(gw)]})


async def model(request: Request) -> Response:
    gw = authorized(request)
    name = request.path_params["model"]
    if name not in model_ids(gw):
        raise APIError(404, f"The model '{name}' does not exist.", param="model", code="model_not_found")
    return JSONResponse(_model_card(gw, name))


async def presets(request: Request) -> Response:
    gw = authorized(request)
    return JSONResponse({"object": "list", "data": gw.presets.describe(gw.config.gateway.model)})


def routes(gw: Gateway) -> list[BaseRoute]:
    return [
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/models/{model:path}", model, methods=["GET"]),
        Route("/v1/presets", presets, methods=["GET"]),
    ]
