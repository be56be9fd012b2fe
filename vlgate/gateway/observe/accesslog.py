"""An access line for every request Starlette's stack serves: GET routes, /metrics, 404s and 405s.

The declared POST API routes are dispatched in front of Starlette (endpoint/dispatch.py) and log their
own line in `Gateway.finish`; this middleware sits inside Starlette's stack, so it never sees them and no
request is logged twice. Lines are written only with `gateway.log_json` (read per request: a reload
turns them on or off), to the `vlgate.access` logger with the request's fields as the record's extras,
so the JSON formatter (cli/common.py) puts them at the top level of the line:

    {"ts": "2026-12-07T14:58:48.553+00:00", "level": "INFO", "logger": "vlgate.access", "message": "GET /v1/models 200",
     "id": "...", "route": "/v1/models", "key": "team-a", "backend": null, "status": 200, "attempts": 0,
     "stream": false, "ttfb_ms": 0.41, "duration_ms": 0.52, "prompt_tokens": null, "completion_tokens": null,
     "method": "GET", "path": "/v1/models"}

`route` is the matched route's path template (`/v1/responses/{response_id}`), `unknown` when none matched;
`key` is the API key's name (never the key), when the request carried a valid one.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vlgate.gateway.endpoint.endpoint import header, request_id
from vlgate.gateway.frontdoor.auth import credentials

if TYPE_CHECKING:
    from vlgate.gateway.gateway import Gateway

access_log = logging.getLogger("vlgate.access")


class AccessLog:
    """ASGI middleware (Starlette's `Middleware(AccessLog, gateway=gw)`): one access line per HTTP request."""

    def __init__(self, app: ASGIApp, gateway: Gateway) -> None:
        self.app = app
        self.gateway = gateway
        self._templates: dict[int, str] = {}  # id(endpoint) -> its route's path template

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.gateway.config.gateway.log_json:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # an exception before the answer started: Starlette's error middleware answers 500
        ttfb: float | None = None

        async def sending(message: Message) -> None:
            nonlocal status, ttfb
            if message["type"] == "http.response.start":
                status = message["status"]
                ttfb = time.perf_counter() - started
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            self._log(scope, status, ttfb, time.perf_counter() - started)

    def _log(self, scope: Scope, status: int, ttfb: float | None, duration: float) -> None:
        keys = self.gateway.keys
        key = keys.identify(credentials(header(scope, b"authorization"), header(scope, b"x-api-key"))) \
            if keys.enabled else None
        method, path = scope["method"], scope["path"]
        fields: dict[str, Any] = {
            "id": request_id(scope), "route": self._route(scope), "key": key, "backend": None, "status": status,
            "attempts": 0, "stream": False, "mid_stream_error": False,
            "ttfb_ms": round(ttfb * 1000, 2) if ttfb is not None else None,
            "duration_ms": round(duration * 1000, 2), "prompt_tokens": None, "completion_tokens": None,
            "method": method, "path": path,
        }
        access_log.info("%s %s %d", method, path, status, extra=fields)

    def _route(self, scope: Scope) -> str:
        """The matched route's path template (bounded, unlike paths with ids), from the endpoint the router
        put in the scope."""
        endpoint = scope.get("endpoint")
        if endpoint is None:
            return "unknown"
        template = self._templates.get(id(endpoint))
        if template is None:
            app = scope.get("app")
            for route in getattr(app, "routes", ()):
                if getattr(route, "endpoint", None) is endpoint or getattr(route, "app", None) is endpoint:
                    template = self._templates[id(endpoint)] = str(getattr(route, "path", scope["path"]))
                    break
            else:
                return str(scope["path"])
        return template
