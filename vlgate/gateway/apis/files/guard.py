"""The store routes' one rule for a database that fails: 503 + Retry-After in OpenAI's shape, never a 500."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from vlgate.errors import APIError
from vlgate.store.base import StoreError

log = logging.getLogger("vlgate.store")

Endpoint = Callable[[Request], Awaitable[Response]]


def store_errors(endpoint: Endpoint) -> Endpoint:
    @functools.wraps(endpoint)
    async def guarded(request: Request) -> Response:
        try:
            return await endpoint(request)
        except StoreError as exc:  # the detail (a path, a host) is the operator's, not the client's
            log.warning("%s %s: %s", request.method, request.url.path, exc)
            raise APIError(503, "The gateway's store is unavailable; retry shortly.", code="store_unavailable",
                           headers={"Retry-After": "1"}) from None

    return guarded
