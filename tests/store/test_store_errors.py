"""A database that fails gives every store route a 503 + Retry-After in OpenAI's shape, never a 500, and the
driver's detail (a file path, a host) stays in the log, out of the client's answer."""

from __future__ import annotations

import asyncio

import pytest
from starlette.requests import Request
from starlette.responses import Response

from vlgate.errors import APIError
from vlgate.gateway.endpoint.local import store_errors, store_route
from vlgate.store.base import StoreError


def test_a_failing_store_is_a_503_without_the_drivers_detail() -> None:
    @store_route
    async def route(request: Request) -> Response:
        raise StoreError("could not open /var/lib/secret/vlgate.db on db-host-7")

    with pytest.raises(APIError) as exc:
        asyncio.run(route(Request({"type": "http", "method": "GET", "path": "/v1/files", "headers": []})))
    assert exc.value.status == 503 and exc.value.code == "store_unavailable"
    assert exc.value.response_headers()["Retry-After"] == "1"
    assert "secret" not in str(exc.value) and "db-host" not in str(exc.value)


def test_api_errors_pass_as_they_are() -> None:
    with pytest.raises(APIError) as exc, store_errors():
        raise APIError(404, "No file found.", code="not_found")
    assert exc.value.status == 404
