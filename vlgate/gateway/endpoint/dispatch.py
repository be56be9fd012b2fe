"""The API's POST routes, dispatched without Starlette's router and exception middleware.

`ProxyEndpoint` answers every error itself in the API's shape, so the router's matching (a regex per
route) and the two exception middlewares only cost time on the hot path: together about 8% of a core at
16 concurrent requests (py-spy, ../shared/bench). Everything else (GET routes, 404/405, the lifespan)
still goes through Starlette, and the drain gate stays in front of both.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from vlgate.gateway.frontdoor.drain import DrainGate
from vlgate.gateway.endpoint.endpoint import ProxyEndpoint


class FastRoutes:
    """POST to a path a `ProxyEndpoint` serves goes straight to it; anything else to `app`."""

    def __init__(self, app: ASGIApp, routes: list[BaseRoute]) -> None:
        self.app = app
        self.endpoints: dict[str, ProxyEndpoint] = {
            route.path: route.endpoint for route in routes
            if isinstance(route, Route) and isinstance(route.endpoint, ProxyEndpoint) and route.methods == {"POST"}
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            endpoint = self.endpoints.get(scope["path"])
            if endpoint is not None:
                await endpoint(scope, receive, send)
                return
        await self.app(scope, receive, send)


class GatewayApp(Starlette):
    """Starlette with the drain gate and the fast POST routes in front of its own middleware stack."""

    def build_middleware_stack(self) -> ASGIApp:
        return DrainGate(FastRoutes(super().build_middleware_stack(), self.routes), self.state.gateway)
