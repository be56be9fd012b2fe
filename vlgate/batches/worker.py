"""The batch worker: one per gateway replica, running batch lines at low priority through the live routes.

Politeness: a line is claimed only while no interactive request waits in the balancer's queue, a ready
backend has a free slot, and this replica's batch lines in flight stay under `storage.batches.share` of the
ready backends' slots (at least one). When requests queue anyway (a burst finds every slot busy, or a
request waits for its prefix holder), the newest batch lines in flight leave at once, as a client that
hangs up would (their slots go to the queue), and run again when there is room: interactive requests
never wait for a batch line to finish. Lines take
the client's road (`endpoint/internal.py`): presets, images, key limits and accounting apply as on a live
request. A 429 or 503 (busy, draining, no backend) is tried again later, never written as the result.

Durability: lines are claimed in the store under a lease this worker renews every lease_s/3; a replica
that dies stops renewing, and any worker takes its lines once the lease runs out. A line's result is
recorded only while this worker still holds it, so a re-run line appears once in the output. A clean
shutdown gives its lines back at once. Batches whose lines it finished are settled (`jobs.settle`):
finished, expired, or found cancelled (then its lines in flight here are stopped).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import secrets
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.types import ASGIApp

from vlgate.batches import jobs, results
from vlgate.gateway.endpoint.internal import Answer, Caller, call
from vlgate.gateway.routing.balancer import Balancer
from vlgate.store.base import BATCH, Line, LineResult, Store, StoreError
from vlgate.store.settings import StorageSettings

log = logging.getLogger("vlgate.batches")

IDLE_S = 1.0  # the store is asked for new lines this often while there are none
BUSY_S = 0.05  # free slots are looked for this often while the fleet has none to spare
PREEMPT_S = 0.003  # the balancer's queue is looked at this often while batch lines are in flight (~1% of a core)
SETTLE_S = 1.0  # batches with lines running or just finished here are checked this often (done? cancelled?)
RETRY_FIRST_S, RETRY_MAX_S = 1.0, 30.0  # a line answered 429/503 waits this long before its next try
RETRY_STATUSES = frozenset({429, 503})


@dataclass
class Stats:
    """This replica's batch work since start (for /metrics)."""

    completed: int = 0
    failed: int = 0
    retried: int = 0
    preempted: int = 0  # lines that left their slot to a queued request (and ran again later)
    lost: int = 0  # results not recorded: the line was taken over or its batch cancelled meanwhile


class BatchWorker:
    def __init__(self, store: Store, balancer: Balancer, endpoints: Mapping[str, ASGIApp],
                 settings: StorageSettings, owner_ok: Callable[[str], bool] = lambda owner: True) -> None:
        self.store = store
        self.owner_ok = owner_ok  # whether the key that made a batch is still configured (not revoked)
        self.balancer = balancer
        self.endpoints = endpoints
        self.settings = settings
        self.id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.running: dict[tuple[str, int], asyncio.Task[None]] = {}
        self._calling: dict[tuple[str, int], asyncio.Future[None]] = {}  # lines in a route now: their `leave`
        self.stats = Stats()
        self._wake = asyncio.Event()
        self._in_route = asyncio.Event()  # set when a line enters a route (the preemption loop wakes)
        self._touched: dict[str, str] = {}  # batch id -> owner: settle these soon
        self._owners: dict[str, str] = {}  # batch id -> owner, of the batches with lines running here
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._dropped: set[str] = set()  # batches that ended while lines of theirs ran here

    # -- lifecycle
    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._claim_loop(), name="vlgate-batch-claims"),
                       loop.create_task(self._heartbeat(), name="vlgate-batch-heartbeat"),
                       loop.create_task(self._preempt_loop(), name="vlgate-batch-preempt"),
                       loop.create_task(self._settle_loop(), name="vlgate-batch-settle")]

    def wake(self) -> None:
        """A batch was created here: look for its lines now."""
        self._wake.set()

    async def aclose(self) -> None:
        """Stop: lines in flight leave their requests as a client would (their slots free, a 499 not a 500)
        and are given back for others to run."""
        for task in self._tasks:
            task.cancel()
        self._closing = True
        for leave in self._calling.values():
            if not leave.done():
                leave.set_result(None)
        lines = list(self.running.values())
        if lines:
            await asyncio.wait(lines, timeout=2.0)
        for task in lines:
            task.cancel()
        await asyncio.gather(*self._tasks, *lines, return_exceptions=True)
        try:
            await self.store.release_lines(self.id)
        except StoreError as exc:  # their leases run out instead
            log.warning("batch worker: could not give back its lines: %s", exc)

    # -- politeness
    def capacity(self, holding: int = 0) -> int:
        """How many more lines may start now (0 while interactive requests wait or the share is used);
        `holding`: lines of ours counted as not running (one that waits to try again)."""
        b = self.balancer
        if b.draining or b.queued:
            return 0
        ready = b.ready_backends()
        total = sum(x.slots for x in ready)
        if not total:
            return 0
        free = sum(max(0, x.free_slots) for x in ready)
        share = max(1, int(self.settings.batches.share * total))
        return max(0, min(free, share - len(self.running) + holding))

    # -- loops
    async def _claim_loop(self) -> None:
        while True:
            wait = BUSY_S
            n = self.capacity()
            if n:
                try:
                    lines = await self.store.claim_lines(self.id, n, self.settings.batches.lease_s)
                except StoreError as exc:
                    log.warning("batch worker: claiming lines failed: %s", exc)
                    lines, wait = [], IDLE_S
                else:
                    wait = BUSY_S if lines else IDLE_S
                for line in lines:
                    self._run(line)
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), wait)
            except TimeoutError:
                pass

    async def _preempt_loop(self) -> None:
        while True:
            if not self._calling:  # nothing to preempt: sleep until a line enters a route
                self._in_route.clear()
                await self._in_route.wait()
            await asyncio.sleep(PREEMPT_S)
            self.preempt()

    def preempt(self) -> int:
        """Requests queue: as many of the newest batch lines in flight leave (each look). Also while a slot is
        free elsewhere: a queued request may be waiting for its prefix holder (routing/waiting.py), which a
        batch that keeps the fleet busy makes likely, and which batch lines may fill."""
        b = self.balancer
        if not b.queued or not self._calling:
            return 0
        newest = list(self._calling.values())[-b.queued:]  # insertion order: the last started last
        for leave in newest:
            if not leave.done():
                leave.set_result(None)
        return len(newest)

    async def _heartbeat(self) -> None:
        lease = self.settings.batches.lease_s
        while True:
            await asyncio.sleep(lease / 3)
            if self.running:
                try:
                    await self.store.renew(self.id, lease)
                except StoreError as exc:
                    log.warning("batch worker: renewing its leases failed: %s", exc)

    async def _settle_loop(self) -> None:
        while True:
            await asyncio.sleep(SETTLE_S)
            try:
                await self._settle_touched()
            except StoreError as exc:
                log.warning("batch worker: settling batches failed: %s", exc)
            except Exception:  # a bug must not stop batches from finishing
                log.exception("batch worker: settling batches failed")

    async def _settle_touched(self) -> None:
        """Batches whose lines finished here lately, and those with lines running here (cancelled?)."""
        running = {batch_id for batch_id, _ in self.running}
        touched, self._touched = self._touched, {}
        touched.update((b, o) for b, o in self._owners.items() if b in running)
        self._owners = {b: o for b, o in self._owners.items() if b in running}
        self._dropped &= running
        for batch_id, owner in touched.items():
            record = await self.store.get(BATCH, batch_id, owner)
            if record is not None:
                record = await jobs.settle(self.store, record, self.settings)
            if record is None or record.data["status"] != "in_progress":
                self._stop_lines_of(batch_id)

    def _stop_lines_of(self, batch_id: str) -> None:
        """The batch ended without them (cancelled, expired): lines in a route leave it as a client would (a
        499, not a 500), the others stop where they wait."""
        self._dropped.add(batch_id)
        for key, task in list(self.running.items()):
            if key[0] == batch_id:
                leave = self._calling.get(key)
                if leave is None:
                    task.cancel()
                elif not leave.done():
                    leave.set_result(None)

    # -- one line
    def _run(self, line: Line) -> None:
        key = (line.batch_id, line.index)
        if key in self.running:  # our own lease ran out and we took it again: it runs already
            return
        task = asyncio.get_running_loop().create_task(self._line(line), name=f"vlgate-batch-{line.batch_id}")
        self.running[key] = task
        task.add_done_callback(lambda _t: self._done(key))

    def _done(self, key: tuple[str, int]) -> None:
        self.running.pop(key, None)
        self._wake.set()  # a slot of the share is free again

    async def _line(self, line: Line) -> None:
        owner = str(line.body.get("owner") or "")
        self._touched[line.batch_id] = self._owners[line.batch_id] = owner
        try:
            result = await self._result(line, owner)
        except Exception:  # a bug of ours: the line's error, not a line held forever
            log.exception("batch worker: line %d of %s failed", line.index, line.batch_id)
            result = results.refused(line.index, line.custom_id, "server_error",
                                     "The gateway failed while running this line.")
        if result is None:  # stopping: the line goes back unfinished
            return
        await self._record(line, result)
        self._touched[line.batch_id] = owner

    async def _record(self, line: Line, result: LineResult) -> None:
        """The line's result, stored; tried again while the database is away (our heartbeat keeps the
        line ours meanwhile, so no one else would run it)."""
        wait = RETRY_FIRST_S
        while True:
            try:
                recorded = await self.store.finish_line(self.id, line.batch_id, line.index, result)
            except StoreError as exc:
                log.warning("batch worker: recording line %d of %s failed (again in %gs): %s", line.index,
                            line.batch_id, wait, exc)
                await asyncio.sleep(wait)
                wait = min(RETRY_MAX_S, wait * 2)
                continue
            if not recorded:
                self.stats.lost += 1
            elif result.ok:
                self.stats.completed += 1
            else:
                self.stats.failed += 1
            return

    async def _result(self, line: Line, owner: str) -> LineResult | None:
        entry = line.body
        url, body = str(entry.get("url")), entry.get("body")
        if not self.owner_ok(owner):
            return results.refused(line.index, line.custom_id, "invalid_api_key",
                                   "The API key that made this batch is no longer configured.")
        endpoint = self.endpoints.get(url)
        if endpoint is None or not isinstance(body, dict):
            return results.refused(line.index, line.custom_id, "unsupported_url", f"{url[:100]} cannot be batched.")
        for name in ("stream", "background"):
            if body.get(name) is True:
                return results.refused(line.index, line.custom_id, "invalid_request",
                                       f"A batch line cannot ask for `{name}: true`; its answer is written to the "
                                       "output file.")
        raw = orjson.dumps(body)
        caller = Caller(owner or None, "batch")
        key, tries = (line.batch_id, line.index), 0
        while True:
            leave = self._calling[key] = asyncio.get_running_loop().create_future()
            self._in_route.set()
            try:
                answer = await call(endpoint, url, raw, caller, leave=leave)
            finally:
                self._calling.pop(key, None)
            if leave.done() and not leave.cancelled() and not answer.headers:  # preempted: its slot went to a request
                if self._closing or line.batch_id in self._dropped:
                    return None
                self.stats.preempted += 1
            elif answer.status in RETRY_STATUSES:
                tries += 1
                self.stats.retried += 1
                await asyncio.sleep(_retry_wait(answer, tries))
            else:
                return results.answered(line.index, line.custom_id, answer)
            while not self.capacity(holding=1):  # the fleet is busy: wait for room before trying again
                await asyncio.sleep(BUSY_S)

    def describe(self) -> dict[str, Any]:
        """This replica's batch work, for the status page."""
        return {"worker": self.id, "running": len(self.running), "completed": self.stats.completed,
                "failed": self.stats.failed, "retried": self.stats.retried, "preempted": self.stats.preempted}


def _retry_wait(answer: Answer, tries: int) -> float:
    hint = answer.header(b"retry-after")
    try:
        wait = float(hint) if hint else 0.0
    except ValueError:
        wait = 0.0
    backoff = min(RETRY_MAX_S, RETRY_FIRST_S * 2 ** (tries - 1))
    return min(RETRY_MAX_S, max(wait, random.uniform(backoff / 2, backoff)))

