"""Request bodies, bounded: in size, in time, and in bytes held across all connections at once.

A client can declare a large body, send part of it and go silent: without a deadline it keeps its
connection and its buffer forever (`limits.body_timeout_s`, then 408). Many clients doing it at once
could still fill the host, each within `max_body_bytes`: the bytes held by bodies being read and by the
requests they belong to are counted against one budget (`limits.max_buffered_bytes`); a request that
would pass it gets 503 + Retry-After before its body is buffered, and the others go on.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.types import Receive, Scope

from vlgate.errors import APIError
from vlgate.gateway.duesweep import DueSweep


class ClientGone(Exception):
    """The client disconnected while the gateway was reading or answering."""


class Deadlines:
    """Body reads past their deadline are cancelled by one sweep every SWEEP_S, not by a timer per request
    (`asyncio.timeout` around every body read cost ~4% of the gateway's CPU at 16 concurrent chats: see
    duesweep.py). A late body gets its 408 up to SWEEP_S after its deadline."""

    SWEEP_S = 0.5

    def __init__(self) -> None:
        self._sweep: DueSweep[asyncio.Task[Any]] = DueSweep(self.SWEEP_S, self._expire)
        self._expired: set[asyncio.Task[Any]] = set()

    def watch(self, task: asyncio.Task[Any], timeout_s: float) -> None:
        self._sweep.watch(task, asyncio.get_running_loop().time() + timeout_s)

    def forget(self, task: asyncio.Task[Any]) -> None:
        self._sweep.forget(task)
        self._expired.discard(task)

    def expired(self, task: asyncio.Task[Any]) -> bool:
        return task in self._expired

    def _expire(self, task: asyncio.Task[Any]) -> None:
        self._expired.add(task)
        task.cancel()


class BodyBudget:
    """Bytes of request bodies held at once, across every connection; one per gateway."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self.refused = 0
        self.deadlines = Deadlines()

    def take(self, size: int) -> None:
        if self.held + size > self.limit:
            self.refused += 1
            raise APIError(503, f"The gateway holds {self.held} bytes of request bodies (limit "
                           f"{self.limit}); retry shortly.", code="server_busy", headers={"Retry-After": "1"})
        self.held += size

    def give_back(self, size: int) -> None:
        self.held -= size


class BodyReader:
    """One request's body, read against its limits; `held` bytes stay counted until `release()`."""

    def __init__(self, budget: BodyBudget, limit: int, timeout_s: float) -> None:
        self.budget = budget
        self.limit = limit
        self.timeout_s = timeout_s
        self.held = 0

    async def read(self, scope: Scope, receive: Receive) -> bytes:
        declared = _declared_length(scope)
        if declared is not None:
            if declared > self.limit:
                raise APIError(413, f"Request body of {declared} bytes exceeds the limit of {self.limit} bytes.",
                               code="request_too_large")
            self._hold(declared)  # before buffering: a refusal costs nothing
        if _already_received(receive):  # nothing to wait for, so no deadline to keep
            return await self._chunks(receive, declared)
        task = asyncio.current_task()
        assert task is not None
        self.budget.deadlines.watch(task, self.timeout_s)
        try:
            return await self._chunks(receive, declared)
        except asyncio.CancelledError:
            if not self.budget.deadlines.expired(task):
                raise
            task.uncancel()
            raise APIError(408, f"The request body did not arrive within {self.timeout_s:g}s.",
                           code="request_timeout", headers={"Connection": "close"}) from None
        finally:
            self.budget.deadlines.forget(task)

    async def _chunks(self, receive: Receive, declared: int | None) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone()
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > self.limit:
                    raise APIError(413, f"Request body exceeds the limit of {self.limit} bytes.",
                                   code="request_too_large")
                if declared is None:  # chunked: counted as it comes
                    self._hold(len(chunk))
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _hold(self, size: int) -> None:
        self.budget.take(size)
        self.held += size

    def release(self) -> None:
        self.budget.give_back(self.held)
        self.held = 0


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                declared = int(value)
            except ValueError:
                raise APIError(400, "Invalid Content-Length header.") from None
            if declared < 0:
                raise APIError(400, "Invalid Content-Length header.")
            return declared
    return None


def _already_received(receive: Receive) -> bool:
    """Whether uvicorn's request cycle already holds the whole body (its `more_body` is False once the
    parser saw the message end), so `receive()` answers at once. Most bodies arrive with their headers;
    for them the deadline's bookkeeping (the task, a dict entry in and out) was ~3% of the gateway's
    instructions per chat (py-spy, nonstream c=16). Any other receive (in-process calls, another server)
    is read under the deadline."""
    cycle = getattr(receive, "__self__", None)
    return cycle is not None and getattr(cycle, "more_body", True) is False

