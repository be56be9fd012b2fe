"""Assemble the Starlette app from plain parts: the declared API routes, the GET routes, the gateway state."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response

from vlgate.backends import Backend
from vlgate.config import Config
from vlgate.errors import APIError
from vlgate.gateway.apis.anthropic import routes as anthropic
from vlgate.gateway.apis.batches import routes as batches
from vlgate.gateway.apis.conversations import routes as conversations
from vlgate.gateway.apis.files import routes as files
from vlgate.gateway.apis.openai import models
from vlgate.gateway.apis.openai import routes as openai
from vlgate.gateway.apis.openai.errors import response
from vlgate.gateway.apis.responses import routes as responses
from vlgate.gateway.apis.responses import stored
from vlgate.gateway.endpoint.dispatch import GatewayApp, api_endpoints, starlette_routes
from vlgate.gateway.endpoint.route import ApiRoute
from vlgate.gateway.gateway import Gateway, backends_from_config
from vlgate.gateway.observe import page, tracing
from vlgate.gateway.observe.accesslog import AccessLog
from vlgate.gateway.routes import admin, capacity, probes

log = logging.getLogger("vlgate.gateway.app")

# every POST API route, declared by its API (apis/<api>/routes.py): a new route is one declaration there
API_ROUTES: tuple[ApiRoute, ...] = (*openai.ROUTES, *responses.ROUTES, *anthropic.ROUTES)
# the GET routes (models, probes, the status page, capacity), the operator's /admin, and the routes
# answered from the store (stored responses, conversations, files, batches: endpoint/local.py)
GET_ROUTE_MODULES = (models, probes, page, capacity, admin, stored, conversations, files, batches)


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, APIError)
    return response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return response(APIError(404, f"Unknown route {request.method} {request.url.path}.", code="unknown_url"))
    if exc.status_code == 405:
        return response(APIError(405, f"Method {request.method} is not allowed on {request.url.path}.",
                                 code="method_not_allowed"))
    return response(APIError(exc.status_code, str(exc.detail)))


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error on %s", request.url.path, exc_info=exc)
    return response(APIError(500, "Internal gateway error.", type="server_error"))


def create_app(config: Config, backends: list[Backend] | None = None, *, poll_health: bool = True,
               reload_config: Callable[[], Config] | None = None) -> GatewayApp:
    """The gateway app. `poll_health=False`: the launcher owns backend state (`vlgate up`).
    `reload_config`: re-reads the config on SIGHUP (gateway/reload.py)."""
    tracing.setup(config.gateway.tracing)  # OpenTelemetry when OTEL_* or gateway.tracing ask for it (once a process)
    gw = Gateway(config, backends if backends is not None else backends_from_config(config),
                 manage_state=poll_health, reload_config=reload_config)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await gw.startup()
        try:
            yield
        finally:
            await gw.shutdown()

    # the declared API routes are dispatched in front of Starlette's stack (endpoint/dispatch.py); their
    # endpoint applies what each declares (drain, auth, key limits, accounting, error dialect)
    endpoints = api_endpoints(gw, API_ROUTES)
    app = GatewayApp(
        routes=[*starlette_routes(endpoints), *(route for module in GET_ROUTE_MODULES for route in module.routes(gw))],
        exception_handlers={APIError: _api_error, HTTPException: _http_error, Exception: _unexpected},
        middleware=[Middleware(AccessLog, gateway=gw)],  # GET/404 access lines (the API routes log in finish)
        lifespan=lifespan,
    )
    app.api_endpoints = endpoints
    gw.api_endpoints = dict(endpoints)  # in-process calls (endpoint/internal.py)
    app.state.gateway = gw
    return app
