"""`POST /admin/backends/{name}/unpark`: an operator brings a parked (crash-looping) backend back now.

Parked backends are tried again by the launcher after a long cool-down anyway; this skips the wait
once the cause is fixed (a driver, a disk, a bad flag). Needs an admin key when keys are configured.
A web page may make the operator's browser POST here without a CORS preflight (a form, or fetch
with text/plain or no body): so a body must be JSON, and a foreign `Origin` is refused.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from vlgate.backends import BackendState
from vlgate.errors import APIError
from vlgate.gateway.frontdoor.auth import admin_refused, header_credentials
from vlgate.gateway.frontdoor.hosts import origin_allowed
from vlgate.gateway.gateway import Gateway, gateway_of


def _has_body(request: Request) -> bool:
    length = request.headers.get("content-length", "0").strip()
    return "transfer-encoding" in request.headers or length != "0"


def admin_request(request: Request) -> Gateway:
    """The Gateway, once the request is a same-origin, JSON-or-bodiless call with an admin key."""
    gw = gateway_of(request)
    origin = request.headers.get("origin")
    if not origin_allowed(origin, request.headers.get("host"), gw.config.gateway.allowed_hosts):
        raise APIError(403, f"Cross-site request refused: Origin {(origin or '')[:100]!r} is not this gateway "
                       "(nor in gateway.allowed_hosts).", code="origin_not_allowed")
    content_type = request.headers.get("content-type", "")
    if (content_type or _has_body(request)) and \
            content_type.split(";", 1)[0].strip().lower() != "application/json":
        raise APIError(415, f"/admin takes JSON only: Content-Type must be application/json "
                       f"(got {content_type[:100] or 'none'}).", param="Content-Type", code="unsupported_media_type")
    if not gw.keys.access(header_credentials(request.headers)).admin:
        raise admin_refused("/admin")
    return gw


async def unpark(request: Request) -> Response:
    gw = admin_request(request)
    name = request.path_params["name"]
    backend = next((b for b in gw.backends if b.name == name), None)
    if backend is None:
        known = ", ".join(b.name for b in gw.backends) or "none"
        raise APIError(404, f"No backend named {name!r} (backends: {known}).", param="name", code="backend_not_found")
    if backend.state is not BackendState.FAILED or backend.unpark is None:
        raise APIError(409, f"Backend {name!r} is {backend.state.value}, not parked by this gateway's launcher: "
                       "nothing to un-park.", param="name", code="not_parked")
    backend.unpark()
    return JSONResponse({"name": name, "unparked": True}, status_code=202)


def routes(gw: Gateway) -> list[BaseRoute]:
    return [Route("/admin/backends/{name}/unpark", unpark, methods=["POST"])]
