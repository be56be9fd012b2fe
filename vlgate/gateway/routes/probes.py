"""`GET /health` (the process is alive), `GET /ready` (a backend can take work), `GET /metrics`.

`/ready` answers anyone with its status; with keys configured, a user key also sees the load and the
backends without addresses (observe/statusdata.py), an admin key everything: backend URLs and
reasons, the config generation and the process id `vlgate reload` checks.
"""

from __future__ import annotations

import os
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from vlgate.backends import Backend
from vlgate.errors import APIError
from vlgate.gateway.frontdoor.auth import bearer_matches, header_credentials
from vlgate.gateway.gateway import Gateway, gateway_of
from vlgate.gateway.observe.metrics import CONTENT_TYPE
from vlgate.gateway.observe.statusdata import public_backends, public_reason


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def ready(request: Request) -> Response:
    gw = gateway_of(request)
    b = gw.balancer
    ok = not b.draining and bool(b.ready_backends())
    body: dict[str, Any] = {
        "status": "ready" if ok else "unavailable",
        "draining": b.draining,
        "reason": "" if ok else b.not_ready_reason(),
        "in_flight": b.in_flight(),
        "queued": b.queued,
        "backends": [_describe(gw, x) for x in gw.backends],
        "config": gw.reloader.status.describe(),  # a refused reload says why here (gateway/reload.py)
        "pid": os.getpid(),  # `vlgate reload` signals this process
    }
    access = gw.keys.identify_access(header_credentials(request.headers))
    if access is None:
        body = {"status": body["status"]}  # probes stay open; the rest needs a key
    elif not access.admin:  # backend URLs, crash reasons, the config and the pid: admin only
        del body["config"], body["pid"]
        body["backends"] = public_backends(gw.backends, body["backends"])
        body["reason"] = public_reason(gw) if body["reason"] else ""
    return JSONResponse(body, status_code=200 if ok else 503)


def _describe(gw: Gateway, backend: Backend) -> dict[str, Any]:
    info = backend.describe()
    check = gw.token_checks.get(backend.name)
    if check is not None:
        info["structure_tokens"] = {"ok": check.ok, "reason": check.reason}
    return info


async def metrics(request: Request) -> Response:
    gw = gateway_of(request)
    token = gw.config.gateway.metrics_token or os.environ.get("VLGATE_METRICS_TOKEN")
    if token and not bearer_matches(request.headers.get("authorization", "").encode("latin-1"), token):
        raise APIError(401, "GET /metrics needs the scrape token: 'Authorization: Bearer <metrics_token>'.",
                       code="invalid_api_key")
    return Response(gw.metrics.render(), media_type=CONTENT_TYPE)


def routes(gw: Gateway) -> list[BaseRoute]:
    return [
        Route("/health", health, methods=["GET"]),
        Route("/ready", ready, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
