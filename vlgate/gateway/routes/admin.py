"""`POST /admin/backends/{name}/unpark`: an operator brings a parked (crash-looping) backend back now.

Parked backends are tried again by the launcher after a long cool-down anyway; this skips the wait
once the cause is fixed (a driver, a disk, a bad flag). Needs an API key when keys are configured.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from vlgate.backends import BackendState
from vlgate.errors import APIError
from vlgate.gateway.gateway import Gateway, authorized


async def unpark(request: Request) -> Response:
    gw = authorized(request)
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
