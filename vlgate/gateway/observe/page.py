"""`GET /` the operator's live status page, `GET /status` its data, `/static/*` its own assets.

The page is plain HTML + JS + CSS shipped as package data (no build step, no CDN). It polls
`/status`; with API keys configured `/status` needs one (the page asks once and keeps it in the
tab's sessionStorage), while the page itself holds no data and is served to anyone. What `/status`
shows depends on the key's role (observe/statusdata.py): a user key sees its own usage only.
"""

from __future__ import annotations

from importlib import resources

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from vlgate.gateway.frontdoor.auth import header_credentials
from vlgate.gateway.gateway import Gateway, gateway_of
from vlgate.gateway.observe.statusdata import snapshot

# the page loads only its own files and talks only to its own gateway; never framed
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


def _page_html() -> bytes:
    return resources.files("vlgate.gateway.observe").joinpath("static/index.html").read_bytes()


async def page(request: Request) -> Response:
    return Response(_page_html(), media_type="text/html; charset=utf-8", headers=_PAGE_HEADERS)


async def status(request: Request) -> Response:
    gw = gateway_of(request)
    access = gw.keys.access(header_credentials(request.headers))
    return JSONResponse(snapshot(gw, access), headers={"Cache-Control": "no-store"})


def routes(gw: Gateway) -> list[BaseRoute]:
    return [
        Route("/", page, methods=["GET"]),
        Route("/status", status, methods=["GET"]),
        Mount("/static", StaticFiles(packages=[("vlgate.gateway.observe", "static")]), name="static"),
    ]
