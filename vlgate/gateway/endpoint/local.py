"""What every route answered from the store shares (stored responses, conversations, files, batches).

These routes are not forwarded, so they are plain Starlette routes; but they take the same front door:
the API key (its name owns what it creates), the drain, the body's size/time/bytes-held limits, JSON
only, and errors in OpenAI's shape (raised as `APIError`, shaped by the app's one handler). List routes
page the way OpenAI's do (`after`, `limit`, `order`; `first_id`, `last_id`, `has_more`).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from vlgate.errors import APIError
from vlgate.gateway.endpoint.endpoint import DRAINING, check_json_content_type, parse_json
from vlgate.gateway.frontdoor.auth import header_credentials
from vlgate.gateway.frontdoor.bodies import BodyReader
from vlgate.gateway.gateway import Gateway, gateway_of
from vlgate.store.base import Order, Record, Store, StoreError

log = logging.getLogger("vlgate.store")

MAX_JSON_CONTAINERS = 10_000  # a store route's body is small (metadata, items): refuse what would hold the loop


class Local:
    """One request to a store route, authorized: its gateway, store and owner."""

    def __init__(self, request: Request, *, writes: bool = False) -> None:
        gw = gateway_of(request)
        if writes and gw.balancer.draining:
            raise DRAINING
        key = gw.keys.check(header_credentials(request.headers))
        if gw.store is None:
            raise APIError(400, "This gateway stores nothing (storage.enabled is false).", code="storage_disabled")
        self.request = request
        self.gw: Gateway = gw
        self.store: Store = gw.store
        self.owner = key or ""  # the key's name; "" without keys (everyone is one owner then)

    async def json(self) -> dict[str, Any]:
        """The JSON object body, read under the front door's limits (empty body: {})."""
        request, gw = self.request, self.gw
        check_json_content_type(request.scope)
        limits = gw.config.gateway.limits
        reader = BodyReader(gw.bodies, gw.config.gateway.max_body_bytes, limits.body_timeout_s)
        try:
            raw = await reader.read(request.scope, request.receive)
        finally:
            reader.release()
        if not raw.strip():
            return {}
        body = parse_json(raw, MAX_JSON_CONTAINERS)
        if not isinstance(body, dict):
            raise APIError(400, "The request body must be a JSON object.", code="invalid_json")
        return body

    def page(self, default_order: Order = "desc", max_limit: int = 100) -> tuple[str | None, int, Order]:
        """`after`, `limit` (1..max_limit, default 20) and `order` from the query string."""
        query = self.request.query_params
        after = query.get("after") or None
        try:
            limit = int(query.get("limit", "20"))
        except ValueError:
            limit = -1
        if not 1 <= limit <= max_limit:
            raise APIError(400, f"limit must be an integer from 1 to {max_limit}.", param="limit",
                           code="invalid_value")
        order = query.get("order", default_order)
        if order not in ("asc", "desc"):
            raise APIError(400, "order must be 'asc' or 'desc'.", param="order", code="invalid_value")
        return after, limit, order  # type: ignore[return-value]

    def param(self, name: str) -> str:
        return str(self.request.path_params[name])

    async def record(self, kind: str, what: str, param: str) -> Record:
        """The record the path names, if this key made it; else the 404 an unknown id gets."""
        id = self.param(param)
        record = await self.store.get(kind, id, self.owner)
        if record is None:
            raise not_found(what, id, param=param)
        return record

    async def delete(self, kind: str, what: str, param: str) -> str:
        """Delete the record the path names (with its children); 404 as for an unknown id."""
        id = self.param(param)
        if not await self.store.delete(kind, id, self.owner):
            raise not_found(what, id, param=param)
        return id

    async def children(self, kind: str, parent: str, show: Callable[[Record], dict[str, Any]]) -> dict[str, Any]:
        """A page of the records under `parent` (a conversation's items, a response's input items)."""
        after, limit, order = self.page("desc")
        records, more = await self.store.list_page(kind, self.owner, parent=parent, after=after, limit=limit,
                                                   order=order)
        return list_object(records, more, show)


def not_found(what: str, id: str, param: str | None = None) -> APIError:
    """The one answer for an unknown id and another key's object: nothing says that it exists."""
    return APIError(404, f"No {what} found with id '{id[:100]}'.", param=param, code="not_found")


def list_object(records: Iterable[Record], has_more: bool,
                show: Callable[[Record], dict[str, Any]] = lambda r: r.data) -> dict[str, Any]:
    data = [show(r) for r in records]
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": has_more}


@contextmanager
def store_errors() -> Iterator[None]:
    """A database that fails is a 503 + Retry-After in OpenAI's shape, never a 500; the driver's detail (a
    path, a host) is the operator's, logged, not the client's."""
    try:
        yield
    except StoreError as exc:
        log.warning("store unavailable: %s", exc)
        raise APIError(503, "The gateway's store is unavailable; retry shortly.", code="store_unavailable",
                       headers={"Retry-After": "1"}) from None


Endpoint = Callable[[Request], Awaitable[Response]]


def store_route(endpoint: Endpoint) -> Endpoint:
    """A store route whose database failures answer 503 (`store_errors`); APIError passes as it is."""

    @functools.wraps(endpoint)
    async def route(request: Request) -> Response:
        with store_errors():
            return await endpoint(request)

    return route
