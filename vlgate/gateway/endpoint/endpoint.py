"""The one endpoint every POST API route goes through, applying what the route declares (`route.py`).

drain (refuse or count) -> auth -> content type -> bounded body (size, time, bytes held across
connections: frontdoor/bodies.py) -> JSON -> key limits -> prepare (the
API's own rules, presets, images) -> forward -> answer (whole, or streamed as bytes) -> accounting.
Every error leaves in the route's dialect. Raw ASGI rather than Request/Response objects: the body is
read with its size limit enforced as it arrives, and a client disconnect is watched for the whole
request so the upstream connection (and with it the llama-server slot) is dropped at once.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from typing import Any

import orjson
from starlette.types import Receive, Scope, Send

from vlgate.backends import BackendState
from vlgate.errors import APIError
from vlgate.gateway.apis.caps import MAX_JSON_CONTAINERS
from vlgate.gateway.endpoint import bodyjson
from vlgate.gateway.endpoint.context import RequestContext
from vlgate.gateway.endpoint.internal import CALLER
from vlgate.gateway.endpoint.respond import (
    read_answer,
    send_error,
    send_json_bytes,
    stream_finished,
    stream_upstream,
)
from vlgate.gateway.endpoint.route import ApiRoute
from vlgate.gateway.frontdoor.auth import credentials
from vlgate.gateway.frontdoor.bodies import BodyReader, ClientGone
from vlgate.gateway.frontdoor.protocol import DEPARTURE, Departure
from vlgate.gateway.gateway import Gateway
from vlgate.gateway.observe import tracing
from vlgate.images import tier

log = logging.getLogger("vlgate.gateway.endpoint")


DRAINING = APIError(503, "The gateway is shutting down; retry on another instance.", code="draining",
                    # the SDK may retry this one (unlike our final failures), on a new connection
                    headers={"Retry-After": "1", "x-should-retry": "true", "Connection": "close"})


def check_json_content_type(scope: Scope) -> None:
    """415 unless the body is declared JSON: a web page can make a browser POST text/plain or a form to a
    gateway on localhost without a CORS preflight, but not application/json."""
    value = header(scope, b"content-type") or b""
    if value.split(b";", 1)[0].strip().lower() != b"application/json":
        shown = value.decode("latin-1")[:100] or "none"
        raise APIError(415, f"Content-Type must be application/json (got {shown}).", param="Content-Type",
                       code="unsupported_media_type")


def request_id(scope: Scope) -> str:
    """The client's X-Request-ID when it is sane (to follow one request across systems), else a new one."""
    given = header(scope, b"x-request-id")
    if given and len(given) <= 128 and given.isascii() and given.replace(b"-", b"").replace(b"_", b"").isalnum():
        return given.decode()
    return f"{_ID_PREFIX}{next(_ids):08x}"


# new request ids: random per process (replicas differ), then a counter (os.urandom costs a syscall a request)
_ID_PREFIX = os.urandom(4).hex()
_ids = itertools.count(1)


def parse_json(raw: bytes, max_containers: int) -> Any:
    """The body parsed (data: URLs of MBs cost the loop little; so many objects that parsing would hold it
    are refused), or a 400 in the route's shape."""
    try:
        return bodyjson.loads(raw, max_containers)
    except bodyjson.TooManyContainers:
        raise APIError(400, f"The request body has more than {max_containers} JSON objects and arrays.",
                       code="array_above_max_length") from None
    except orjson.JSONDecodeError as exc:
        raise APIError(400, f"The request body is not valid JSON: {exc}.", code="invalid_json") from None


def header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


class ApiEndpoint:
    """Serves one declared `ApiRoute` (at each of its paths)."""

    def __init__(self, gateway: Gateway, route: ApiRoute) -> None:
        self.gateway = gateway
        self.route = route

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gw, route = self.gateway, self.route
        ctx = RequestContext(route=route.label, started=time.perf_counter(), id=request_id(scope),
                             dialect=route.dialect, charges=route.charges)
        if route.drains:
            if gw.balancer.draining:
                gw.finish(ctx, 503)
                await send_error(send, DRAINING, ctx)
                return
            gw.admitted += 1
        span = tracing.request(scope, route, ctx.id) if tracing.ENABLED else None  # the trace (observe/tracing.py)
        status = 500
        limits = gw.config.gateway.limits
        body = BodyReader(gw.bodies, gw.config.gateway.max_body_bytes, limits.body_timeout_s)
        try:
            status = await self._handle(scope, receive, send, ctx, body)
        except (ClientGone, ConnectionError):  # the client left (a send to a closed connection)
            status = 200 if stream_finished(ctx) else 499  # after the last event: the whole answer was had
        except APIError as exc:
            status = exc.status
            await send_error(send, exc, ctx)
        except Exception:  # a bug of ours: still an answer in the API's shape, and the gateway keeps serving
            log.exception("unexpected error on %s", route.label)
            status = 500
            await send_error(send, APIError(500, "Internal gateway error.", type="server_error"), ctx)
        finally:
            body.release()
            if route.drains:
                gw.admitted -= 1
            gw.finish(ctx, status)
            if span is not None:
                tracing.finish(span, ctx, status)

    async def _handle(self, scope: Scope, receive: Receive, send: Send, ctx: RequestContext,
                      reader: BodyReader) -> int:
        gw, route = self.gateway, self.route
        caller = scope.get(CALLER)  # an in-process call (background, batch): the key was checked when accepted
        if caller is not None:
            ctx.key = caller.key
        else:
            ctx.key = gw.keys.check(credentials(header(scope, b"authorization"), header(scope, b"x-api-key")))
        check_json_content_type(scope)
        raw = await reader.read(scope, receive)
        body = parse_json(raw, MAX_JSON_CONTAINERS)
        ctx.release_key = await gw.key_limits.admit(ctx.key, route.charges)  # released in Gateway.finish
        if tracing.ENABLED:
            tracing.request_body(route, body)
        if gw.images.tier is not None:  # images a front tier already normalized pass on (images/tier.py)
            tier.receive(header(scope, tier.HEADER))
        await route.prepare(gw, ctx, body)
        if ctx.body_changed:
            raw = orjson.dumps(body)
        ctx.stream = body.get("stream") is True

        # a client that goes away cancels this task: the upstream connection drops and the slot frees
        watch = _Departure(scope, receive)
        upstream = None
        try:
            if ctx.respond is not None:  # a preset pipeline: several backend requests, answered by the gateway
                return await ctx.respond(send)
            upstream = await gw.forwarder.send(route.upstream, raw, ctx.affinity, ctx.stream, route.takes_slot, ctx.id)
            ctx.backend = upstream.backend.name
            ctx.attempts = upstream.attempts
            ctx.ttfb = time.perf_counter() - ctx.started
            if upstream.response.content_type == "text/event-stream":
                await stream_upstream(send, upstream, ctx)
                return upstream.status
            data = ctx.answer = await read_answer(upstream)
            upstream.response.release()
            upstream.release()
            status = upstream.status
            headers = upstream.headers() + route.dialect.id_headers(ctx.id.encode())
            if status == 200:
                if ctx.finish is not None:
                    data = ctx.finish(data)
                if ctx.persist is not None:
                    await ctx.persist()
            elif status >= 400:
                status, data = route.dialect.backend_error(status, data)
                if status >= 500:  # final: our retries already ran, the SDK's must not multiply them
                    headers.append((b"x-should-retry", b"false"))
                    upstream.failed(BackendState.SUSPECT, f"answered {status}")
            if status < 500:
                upstream.succeeded()
            watch.stop()
            await send_json_bytes(send, status, data, headers)
            return status
        except asyncio.CancelledError:
            if watch.gone():
                watch.task.uncancel()
                raise ClientGone() from None
            raise
        finally:
            watch.stop()
            if upstream is not None:
                upstream.close()  # no-op after a clean finish; drops the connection otherwise


class _Departure:
    """Cancels the request's task when its client leaves: through the front door's `Departure` (called from
    the protocol's connection_lost, no task of its own), else (another server, a test transport) a task
    waiting on receive() for `http.disconnect`."""

    __slots__ = ("departure", "task", "waiter")

    def __init__(self, scope: Scope, receive: Receive) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.task = task
        self.departure: Departure | None = scope.get(DEPARTURE)
        self.waiter: asyncio.Future[None] | None = None
        if self.departure is not None:
            if self.departure.gone:
                raise ClientGone()
            self.departure.on_gone = task.cancel
        else:
            self.waiter = asyncio.ensure_future(_wait_disconnect(receive))
            self.waiter.add_done_callback(self._waited)

    def _waited(self, waiter: asyncio.Future[None]) -> None:
        if not waiter.cancelled():
            self.task.cancel()

    def gone(self) -> bool:
        if self.departure is not None:
            return self.departure.gone
        return self.waiter is not None and self.waiter.done() and not self.waiter.cancelled()

    def stop(self) -> None:
        """From here on the client leaving no longer cancels (the answer is being sent)."""
        if self.departure is not None:
            self.departure.on_gone = None
        elif self.waiter is not None:
            self.waiter.remove_done_callback(self._waited)
            self.waiter.cancel()


async def _wait_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
