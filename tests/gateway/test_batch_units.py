"""Batch parts without a gateway process: the input reader's bounds (what a stranger's file can cost), the
worker's politeness rule, and a job's life on a real SQLite store: the window running out, a finish left
half-done by a dead replica, two replicas finishing at once, a line answered 503 tried again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from starlette.types import Receive, Scope, Send

from vlgate.backends import Backend, BackendState
from vlgate.batches import jobs, lines
from vlgate.batches.results import answered
from vlgate.batches.worker import BatchWorker
from vlgate.gateway.endpoint.internal import Answer
from vlgate.gateway.routing.balancer import Balancer
from vlgate.store import new_store
from vlgate.store.base import BATCH, FILE, Line, Store
from vlgate.store.settings import StorageSettings


def jsonl(n: int, **body: Any) -> bytes:
    return b"".join(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                                "body": {"messages": [], **body}}).encode() + b"\n" for i in range(n))


def read(raw: bytes, max_lines: int = 50_000, max_line_bytes: int = 1 << 20) -> int:
    return asyncio.run(lines.check(raw, max_lines=max_lines, max_line_bytes=max_line_bytes))


# ------------------------------------------------------------------ the input reader

def test_fifty_thousand_tiny_lines_read_without_holding_the_loop() -> None:
    raw = jsonl(50_000)
    stalls: list[float] = []

    async def main() -> int:
        async def ticker() -> None:  # CPU time between its turns: what the reader held the loop for
            last = time.thread_time()  # (not wall time: on a busy machine the process itself waits its turn)
            while True:
                await asyncio.sleep(0)
                now = time.thread_time()
                stalls.append(now - last)
                last = now

        tick = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        started = time.perf_counter()
        n = await lines.check(raw, max_lines=50_000, max_line_bytes=1 << 20)
        tick.cancel()
        assert time.perf_counter() - started < 10
        return n

    assert asyncio.run(main()) == 50_000
    assert len(stalls) >= 10 and max(stalls) < 0.05  # given back every ~5 ms of reading
    with pytest.raises(lines.InputError, match=r"Line 50001: .*more than 50000"):
        read(raw + jsonl(1).replace(b'"r0"', b'"extra"'))


def test_a_huge_line_is_refused_by_its_length_before_parsing() -> None:
    huge = b'{"custom_id": "x", "method": "POST", "url": "/v1/chat/completions", "body": {"a": "' + b"x" * (
        20 << 20) + b'"}}\n'
    started = time.perf_counter()
    with pytest.raises(lines.InputError) as exc:
        read(jsonl(2) + huge, max_line_bytes=1 << 20)
    assert exc.value.line == 3 and exc.value.code == "line_too_large"
    assert time.perf_counter() - started < 0.5


def test_many_containers_and_bad_bytes_are_named() -> None:
    nested = b'{"custom_id": "x", "method": "POST", "url": "/v1/embeddings", "body": {"input": ' + b"[" * 300_000
    with pytest.raises(lines.InputError) as exc:
        read(nested + b"\n", max_line_bytes=1 << 20)
    assert exc.value.line == 1 and exc.value.code == "line_too_large"
    with pytest.raises(lines.InputError) as exc:
        read(jsonl(1) + b'{"custom_id": "\xc3\x28"}\n')
    assert exc.value.line == 2 and exc.value.code == "invalid_encoding"


def test_lines_read_keep_their_numbers_and_bodies() -> None:
    async def main() -> list[lines.InputLine]:
        return [x async for x in lines.read_lines(b"\n" + jsonl(2, max_tokens=3), max_lines=10, max_line_bytes=999)]

    got = asyncio.run(main())
    assert [(x.index, x.number, x.custom_id) for x in got] == [(0, 2, "r0"), (1, 3, "r1")]
    assert got[0].body == {"messages": [], "max_tokens": 3} and got[0].url == "/v1/chat/completions"


# ------------------------------------------------------------------ politeness

def worker_for(backends: list[Backend], share: float = 0.5) -> BatchWorker:
    settings = StorageSettings.model_validate({"batches": {"share": share}})
    return BatchWorker(None, Balancer(backends), {}, settings)  # type: ignore[arg-type]  # no store needed


def ready(slots: int) -> Backend:
    b = Backend(url="http://127.0.0.1:1", name=f"b{slots}", slots=slots)
    b.state = BackendState.READY
    return b


def test_capacity_leaves_the_share_and_queued_requests_first() -> None:
    a, b = ready(4), ready(4)
    w = worker_for([a, b], share=0.5)
    assert w.capacity() == 4  # half of 8 slots
    a.in_flight, b.in_flight = 4, 3
    assert w.capacity() == 1  # one slot free
    b.external_busy = 1  # another replica's work
    assert w.capacity() == 0
    a.in_flight = b.in_flight = b.external_busy = 0
    w.running = {("x", i): None for i in range(3)}  # type: ignore[misc]
    assert w.capacity() == 1 and w.capacity(holding=1) == 2
    w.running = {}
    w.balancer._waiters.append(object())  # type: ignore[arg-type]  # an interactive request waits
    assert w.capacity() == 0
    w.balancer._waiters.clear()
    w.balancer.draining = True
    assert w.capacity() == 0
    w.balancer.draining = False
    a.state = b.state = BackendState.LOADING
    assert w.capacity() == 0
    assert worker_for([ready(1)], share=0.5).capacity() == 1  # a one-slot fleet still runs batches, one line


# ------------------------------------------------------------------ a job's life on a real store

@contextlib.asynccontextmanager
async def opened(path: Path) -> AsyncIterator[Store]:
    """A started SQLite store, closed however the test ends (its connection thread would keep pytest alive)."""
    store = new_store(f"sqlite:///{path}")
    await store.start()
    try:
        yield store
    finally:
        await store.close()


async def running_batch(store: Store, n: int) -> Any:
    record = jobs.new_batch("batch_abc", "alice", endpoint="/v1/chat/completions", input_file_id="file-x",
                            metadata=None, model=None, output_expires_s=None, now=int(time.time()))
    await store.add([record])
    await store.add_lines(record.id, [Line(record.id, i, f"r{i}", {"url": "/v1/chat/completions", "body": {},
                                                                    "owner": "alice"}) for i in range(n)])
    return await jobs.start(store, record, n)


async def finish(store: Store, worker: str, n: int) -> None:
    for line in await store.claim_lines(worker, n, 30):
        answer = Answer(200, [(b"x-request-id", b"req-1")], orjson.dumps({"usage": {"prompt_tokens": 2,
                                                                                      "completion_tokens": 3}}))
        assert await store.finish_line(worker, line.batch_id, line.index, answered(line.index, line.custom_id, answer))


def test_the_window_running_out_expires_the_batch(tmp_path: Path) -> None:
    async def main() -> None:
        settings = StorageSettings()
        async with opened(tmp_path / "s.db") as store:
            record = await running_batch(store, 3)
            await finish(store, "w1", 1)
            claimed = await store.claim_lines("w2", 1, 30)  # in flight when the window ends
            record.data["expires_at"] = int(time.time()) - 1
            await store.save(record)
            record = await jobs.settle(store, record, settings)
            assert record.data["status"] == "expired" and record.data["expired_at"]
            assert record.data["request_counts"] == {"total": 3, "completed": 1, "failed": 0}
            assert record.expires_at is not None  # retention starts
            out = await store.content(FILE, record.data["output_file_id"], "alice")
            assert out is not None and [json.loads(x)["custom_id"] for x in out.splitlines()] == ["r0"]
            assert record.data["error_file_id"] is None
            assert await store.claim_lines("w3", 10, 30) == []  # nothing of it runs any more
            late = answered(1, "r1", Answer(200, [], b"{}"))
            assert not await store.finish_line("w2", claimed[0].batch_id, claimed[0].index, late)
            assert (await store.line_counts(record.id)).cancelled == 2

    asyncio.run(main())


def test_a_finish_left_half_done_is_finished_by_the_next_reader(tmp_path: Path) -> None:
    async def main() -> None:
        settings = StorageSettings()
        async with opened(tmp_path / "s.db") as store:
            record = await running_batch(store, 2)
            await finish(store, "w1", 2)
            record.data.update(status="finalizing", finalizing_at=int(time.time()) - 600)  # its replica died
            assert await store.replace_if(record, ["in_progress"])
            record = await jobs.settle(store, record, settings)
            assert record.data["status"] == "completed" and record.data["request_counts"]["completed"] == 2
            assert record.data["usage"]["total_tokens"] == 10
            stale = jobs.new_batch("batch_stale", "alice", endpoint="/v1/embeddings", input_file_id="f",
                                   metadata=None, model=None, output_expires_s=None, now=int(time.time()) - 600)
            await store.add([stale])  # validating forever: its gateway died while storing the lines
            failed = await jobs.settle(store, stale, settings)
            assert failed.data["status"] == "failed"
            assert failed.data["errors"]["data"][0]["code"] == "validation_interrupted"

    asyncio.run(main())


def test_two_replicas_finishing_at_once_finish_it_once(tmp_path: Path) -> None:
    async def main() -> None:
        settings = StorageSettings()
        async with opened(tmp_path / "s.db") as one, opened(tmp_path / "s.db") as two:
            record = await running_batch(one, 4)
            await finish(one, "w1", 4)
            a, b = await asyncio.gather(jobs.settle(one, record, settings),
                                        jobs.settle(two, await two.get(BATCH, record.id, "alice"), settings))
            # the loser of the compare-and-set sees the winner's step: finalizing, or already completed
            assert {a.data["status"], b.data["status"]} in ({"completed"}, {"completed", "finalizing"})
            stored = await two.get(BATCH, record.id, "alice")
            assert stored is not None and stored.data["status"] == "completed"
            files, _ = await one.list_page(FILE, "alice")
            assert len(files) == 1  # one output file, however many finished it
            assert (await one.count_by_status(BATCH)) == {"completed": 1}

    asyncio.run(main())


def test_a_line_answered_503_is_tried_again_not_recorded(tmp_path: Path) -> None:
    calls: list[bytes] = []

    async def route(scope: Scope, receive: Receive, send: Send) -> None:
        message = await receive()
        calls.append(message["body"])
        status, body = (503, b'{"error": {"message": "busy", "code": "queue_timeout"}}') if len(calls) == 1 else (
            200, b'{"object": "chat.completion"}')
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"retry-after", b"0"), (b"x-request-id", b"req-9")]})
        await send({"type": "http.response.body", "body": body})

    async def main() -> None:
        settings = StorageSettings()
        async with opened(tmp_path / "s.db") as store:
            record = await running_batch(store, 1)
            worker = BatchWorker(store, Balancer([ready(2)]), {"/v1/chat/completions": route}, settings)
            worker.start()
            try:
                deadline = time.monotonic() + 15
                while (await store.get(BATCH, record.id, "alice")).data["status"] != "completed":  # type: ignore[union-attr]
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.1)
            finally:
                await worker.aclose()
            assert len(calls) == 2 and worker.stats.retried == 1 and worker.stats.completed == 1
            done = await store.line_results(record.id)
            assert [r.result["response"]["status_code"] for r in done] == [200]

    asyncio.run(main())


def test_results_are_read_a_page_at_a_time(tmp_path: Path) -> None:
    async def main() -> None:
        async with opened(tmp_path / "s.db") as store:
            record = await running_batch(store, 5)
            await finish(store, "w1", 5)
            pages, after = [], -1
            while page := await store.line_results(record.id, after=after, limit=2):
                pages.append([r.index for r in page])
                after = page[-1].index
            assert pages == [[0, 1], [2, 3], [4]]
            assert [r.index for r in await store.line_results(record.id)] == [0, 1, 2, 3, 4]

    asyncio.run(main())


def test_a_revoked_keys_lines_fail_without_running(tmp_path: Path) -> None:
    called: list[bytes] = []

    async def route(scope: Scope, receive: Receive, send: Send) -> None:
        called.append((await receive())["body"])

    async def main() -> None:
        async with opened(tmp_path / "s.db") as store:
            record = await running_batch(store, 2)
            worker = BatchWorker(store, Balancer([ready(2)]), {"/v1/chat/completions": route}, StorageSettings(),
                                 owner_ok=lambda owner: owner != "alice")
            worker.start()
            try:
                deadline = time.monotonic() + 15
                while (await store.get(BATCH, record.id, "alice")).data["status"] != "completed":  # type: ignore[union-attr]
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.1)
            finally:
                await worker.aclose()
            errors = [r.result["error"]["code"] for r in await store.line_results(record.id)]
            assert errors == ["invalid_api_key", "invalid_api_key"] and called == []

    asyncio.run(main())
