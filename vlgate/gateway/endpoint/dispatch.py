"""The declared POST API routes, dispatched without Starlette's router and exception middleware.

`ApiEndpoint` answers every error itself in its route's dialect, so the router's matching (a regex per
route) and the two exception middlewares only cost time on the hot path: together about 8% of a core at
16 concurrent requests (py-spy, ../shared/bench). Everything else (GET routes, 404/405, the lifespan)
still goes through Starlette. Every path of a route (aliases too) maps to the same endpoint.
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.applications import Starlette
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from vlgate.gateway.endpoint.endpoint import ApiEndpoint
from vlgate.gateway.endpoint.route import ApiRoute
from vlgate.gateway.gateway import Gateway


def api_endpoints(gw: Gateway, routes: Iterable[ApiRoute]) -> dict[str, ApiEndpoint]:
    """path -> endpoint for every path of every declared route (one endpoint per route)."""
    out: dict[str, ApiEndpoint] = {}
    for route in routes:
        endpoint = ApiEndpoint(gw, route)
        for path in route.paths:
            if path in out:
                raise ValueError(f"two API routes declare {path}")
            out[path] = endpoint
    return out


def starlette_routes(endpoints: dict[str, ApiEndpoint]) -> list[BaseRoute]:
    """The same endpoints for Starlette's router too: a GET on an API path is its 405, not a 404."""
    return [Route(path, endpoint, methods=["POST"]) for path, endpoint in endpoints.items()]


class FastRoutes:
    """POST to a declared API path goes straight to its endpoint; anything else to `app`."""

    def __init__(self, app: ASGIApp, endpoints: dict[str, ApiEndpoint]) -> None:
        self.app = app
        self.endpoints = endpoints

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            endpoint = self.endpoints.get(scope["path"])
            if endpoint is not None:
                await endpoint(scope, receive, send)
                return
        await self.app(scope, receive, send)


class GatewayApp(Starlette):
    """Starlette with the declared API routes dispatched in front of its own middleware stack."""

    api_endpoints: dict[str, ApiEndpoint]

    def build_middleware_stack(self) -> ASGIApp:
        return FastRoutes(super().build_middleware_stack(), self.api_endpoints)
