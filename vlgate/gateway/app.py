"""Assemble the Starlette app from plain parts: routes, the gateway state, OpenAI-shaped errors."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from vlgate.backends import Backend
from vlgate.config import Config
from vlgate.errors import APIError
from vlgate.gateway.endpoint.dispatch import GatewayApp
from vlgate.gateway.apis.anthropic import routes as messages
from vlgate.gateway.apis.openai import chat, completions, embeddings, models, tokens
from vlgate.gateway.apis.responses import routes as responses
from vlgate.gateway.observe import page as status
from vlgate.gateway.routes import admin, aliases, capacity, probes
from vlgate.gateway.gateway import Gateway, backends_from_config

log = logging.getLogger("vlgate.gateway.app")

# every API surface the gateway serves: a new route is one module in routes/ and one entry here
ROUTE_MODULES = (chat, completions, embeddings, models, probes, status, responses, messages, tokens, aliases,
                 capacity, admin)


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, APIError)
    return exc.response()


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return APIError(404, f"Unknown route {request.method} {request.url.path}.", code="unknown_url").response()
    if exc.status_code == 405:
        return APIError(405, f"Method {request.method} is not allowed on {request.url.path}.",
                        code="method_not_allowed").response()
    return APIError(exc.status_code, str(exc.detail)).response()


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error on %s", request.url.path, exc_info=exc)
    return APIError(500, "Internal gateway error.", type="server_error").response()


def create_app(config: Config, backends: list[Backend] | None = None, *, poll_health: bool = True,
               reload_config: Callable[[], Config] | None = None) -> GatewayApp:
    """The gateway app. `poll_health=False`: the launcher owns backend state (`vlgate up`).
    `reload_config`: re-reads the config on SIGHUP (gateway/reload.py)."""
    gw = Gateway(config, backends if backends is not None else backends_from_config(config),
                 manage_state=poll_health, reload_config=reload_config)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await gw.startup()
        try:
            yield
        finally:
            await gw.shutdown()

    # the drain gate (on SIGTERM: new API requests 503 `draining`, admitted ones go on) and the fast POST
    # routes sit in front of Starlette's stack (gateway/fastpath.py)
    app = GatewayApp(
        routes=[route for module in ROUTE_MODULES for route in module.routes(gw)],
        exception_handlers={APIError: _api_error, HTTPException: _http_error, Exception: _unexpected},
        lifespan=lifespan,
    )
    app.state.gateway = gw
    return app
