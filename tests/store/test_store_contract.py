"""Every Store method, on SQLite and on a real PostgreSQL: the contract the routes rely on.

Owner isolation (another owner's object is exactly as absent as an unknown id), list paging, the
compare-and-set, cascading deletes, blobs, and the batch lines' leases: claims that never overlap (many
concurrent workers on two store instances, as two replicas), leases that run out and are taken over, a
worker that lost its lease cannot finish the line.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from vlgate.store import new_store
from vlgate.store.base import (
    BATCH,
    CONVERSATION,
    CONVERSATION_ITEM,
    FILE,
    RESPONSE,
    RESPONSE_INPUT,
    Line,
    LineResult,
    Record,
    Store,
)

Run = Callable[..., None]


def rec(kind: str, id: str, owner: str = "alice", *, data: dict[str, object] | None = None,
        parent: str | None = None, expires_at: float | None = None, created_at: int = 0) -> Record:
    return Record(kind=kind, id=id, owner=owner, data={"id": id, **(data or {})}, parent=parent,
                  expires_at=expires_at, created_at=created_at)


def batch(id: str, status: str = "in_progress", owner: str = "alice") -> Record:
    return Record(kind=BATCH, id=id, owner=owner, data={"id": id, "object": "batch", "status": status})


def lines(batch_id: str, n: int) -> list[Line]:
    return [Line(batch_id, i, f"req-{i}", {"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
                                           "body": {"n": i}}) for i in range(n)]


async def opened(url: str) -> Store:
    store = new_store(url)
    await store.start()
    return store


# ------------------------------------------------------------------ records

def test_add_and_get_with_owner_isolation(store_run: Run) -> None:
    async def scenario(store: Store, url: str) -> None:
        before = int(time.time())
        first, second = rec(RESPONSE, "resp_1"), rec(RESPONSE, "resp_2", created_at=1234)
        await store.add([first, second])
        assert 0 < first.seq < second.seq
        assert before <= first.created_at <= int(time.time()) and second.created_at == 1234
        got = await store.get(RESPONSE, "resp_1", "alice")
        assert got is not None and got.data == {"id": "resp_1"} and got.seq == first.seq
        assert got.created_at == first.created_at and got.parent is None and got.blob is None
        # another owner, another kind, an unknown id: all the same None
        assert await store.get(RESPONSE, "resp_1", "bob") is None
        assert await store.get(CONVERSATION, "resp_1", "alice") is None
        assert await store.get(RESPONSE, "resp_unknown", "alice") is None
    store_run(scenario)


def test_json_is_kept_exactly(store_run: Run) -> None:
    async def scenario(store: Store, url: str) -> None:
        data = {"z": 1, "a": [1.5, None, True], "text": "héllo \u0000 \U0001f600 \"q\"", "nested": {"b": {}, "a": []}}
        await store.add([Record(RESPONSE, "resp_j", "alice", data)])
        got = await store.get(RESPONSE, "resp_j", "alice")
        assert got is not None and got.data == data
        assert list(got.data) == ["z", "a", "text", "nested"]  # the API's key order survives (PostgreSQL: json)
    store_run(scenario)


def test_save_inserts_then_replaces(store_run: Run) -> None:
    async def scenario(store: Store, url: str) -> None:
        file = Record(FILE, "file-1", "alice", {"id": "file-1", "status": "uploaded"}, blob=b"\x00\x01data")
        await store.save(file)
        seq, created = file.seq, file.created_at
        assert seq > 0 and created > 0
        file.data = {"id": "file-1", "status": "processed"}
        file.blob, file.expires_at = None, time.time() + 100
        await store.save(file)
        assert (file.seq, file.created_at) == (seq, created)
        got = await store.get(FILE, "file-1", "alice", with_blob=True)
        assert got is not None and got.data["status"] == "processed" and got.blob == b"\x00\x01data"  # blob kept
        assert got.expires_at == file.expires_at
        assert await store.count_by_status(FILE) == {"processed": 1}
    store_run(scenario)


def test_replace_if_is_compare_and_set(store_run: Run) -> None:
    async def scenario(store: Store, url: str) -> None:
        await store.add([batch("batch_1", "in_progress")])
        done = batch("batch_1", "completed")
        assert await store.replace_if(done, ["in_progress", "finalizing"]) is True
        assert await store.replace_if(batch("batch_1", "cancelled"), ["in_progress"]) is False
        got = await store.get(BATCH, "batch_1", "alice")
        assert got is not None and got.data["status"] == "completed"
        assert await store.replace_if(batch("batch_unknown", "x"), ["in_progress"]) is False
        assert await store.replace_if(done, []) is False

        # a cancel racing a completion, on two store instances (two replicas): exactly one wins
        await store.add([batch("batch_2", "in_progress")])
        other = await opened(url)
        try:
            for _ in range(10):
                await store.save(batch("batch_2", "in_progress"))
                wins = await asyncio.gather(store.replace_if(batch("batch_2", "completed"), ["in_progress"]),
                                            other.replace_if(batch("batch_2", "cancelled"), ["in_progress"]))
                assert sorted(wins) == [False, True]
                got = await store.get(BATCH, "batch_2", "alice")
                assert got is not None and got.data["status"] == ("completed" if wins[0] else "cancelled")
        finally:
            await other.close()
    store_run(scenario)


def test_delete_cascades_to_children_and_lines(store_run: Run) -> None:
    async def scenario(store: Store, url: str) -> None:
        await store.add([rec(CONVERSATION, "conv_1"), rec(CONVERSATION_ITEM, "msg_1", parent="conv_1"),
                         rec(CONVERSATION_ITEM, "msg_2", parent="conv_1"), rec(CONVERSATION, "conv_2"),
                         rec(CONVERSATION_ITEM, "msg_3", parent="conv_2"), batch("batch_1")])
        await store.add_lines("batch_1", lines("batch_1", 3))
        assert await store.delete(CONVERSATION, "conv_1", "bob") is False  # not bob's: nothing happens
        assert await store.delete(CONVERSATION, "conv_x", "alice") is False
        assert (await store.get(CONVERSATION_ITEM, "msg_1", "alice")) is not None
        assert await store.delete(CONVERSATION, "conv_1", "alice") is True
        assert await store.get(CONVERSATION, "conv_1", "alice") is None
        assert await store.get(CONVERSATION_ITEM, "msg_1", "alice") is None
        assert await store.get(CONVERSATION_ITEM, "msg_2", "alice") is None
        assert await store.get(CONVERSATION_ITEM, "msg_3", "alice") is not None  # another parent's child stays
        assert await store.delete(CONVERSATION, "conv_1", "alice") is False  # already gone
        assert await store.delete(BATCH, "batch_1", "alice") is True
        assert (await store.line_counts("batch_1")).total == 0
    store_run(scenario)


def test_list_order_after_and_has_more(store_run: Run) -> None:
    async def scenario(store: Store, url: str) -> None:
        await store.add([rec(RESPONSE, f"resp_{i}") for i in range(5)])
        await store.add([rec(RESPONSE, "resp_bob", owner="bob"), rec(FILE, "file-1")])
        await store.add([rec(RESPONSE_INPUT, f"in_{i}", parent="resp_0") for i in range(3)])
        await store.add([rec(RESPONSE_INPUT, "in_other", parent="resp_1")])

        def ids(page: tuple[list[Record], bool]) -> tuple[list[str], bool]:
            return [r.id for r in page[0]], page[1]

        assert ids(await store.list_page(RESPONSE, "alice", limit=2)) == (["resp_4", "resp_3"], True)
        assert ids(await store.list_page(RESPONSE, "alice", limit=2, after="resp_3")) == (["resp_2", "resp_1"], True)
        assert ids(await store.list_page(RESPONSE, "alice", limit=2, after="resp_1")) == (["resp_0"], False)
        assert ids(await store.list_page(RESPONSE, "alice", limit=5)) == ([f"resp_{i}" for i in (4, 3, 2, 1, 0)], False)
        assert ids(await store.list_page(RESPONSE, "alice", limit=3, order="asc")) == (["resp_0", "resp_1", "resp_2"],
                                                                                       True)
        assert ids(await store.list_page(RESPONSE, "alice", order="asc", after="resp_2")) == (["resp_3", "resp_4"],
                                                                                              False)
        assert ids(await store.list_page(RESPONSE, "bob")) == (["resp_bob"], False)
        assert ids(await store.list_page(RESPONSE, "carol")) == ([], False)
        # an unknown `after`, or another owner's: an empty page
        assert ids(await store.list_page(RESPONSE, "alice", after="resp_unknown")) == ([], False)
        assert ids(await store.list_page(RESPONSE, "alice", after="resp_bob")) == ([], False)
        # children of one parent
        assert ids(await store.list_page(RESPONSE_INPUT, "alice", parent="resp_0", order="asc")) == (
            ["in_0", "in_1", "in_2"], False)
        assert ids(await store.list_page(RESPONSE_INPUT, "alice", parent="resp_0", after="in_2", limit=1)) == (
            ["in_1"], True)
        assert ids(await store.list_page(RESPONSE_INPUT, "alice", parent="resp_1", after="in_2")) == ([], False)
        assert ids(await store.list_page(RESPONSE_INPUT, "bob", parent="resp_0")) == ([], False)
    store_run(scenario)


def test_blobs(store_run: Run) -> None:
    async def scenario(store: Store, url: str) -> None:
        payload = bytes(range(256)) * 4096  # 1 MiB, every byte value
        await store.add([Record(FILE, "file-1", "alice", {"id": "file-1", "bytes": len(payload)}, blob=payload),
                         Record(FILE, "file-2", "alice", {"id": "file-2"})])
        assert await store.content(FILE, "file-1", "alice") == payload
        assert await store.content(FILE, "file-1", "bob") is None
        assert await store.content(FILE, "file-2", "alice") is None
        plain = await store.get(FILE, "file-1", "alice")
        assert plain is not None and plain.blob is None  # only loaded when asked
        full = await store.get(FILE, "file-1", "alice", with_blob=True)
        assert full is not None and full.blob == payload
        page, _ = await store.list_page(FILE, "alice")
        assert all(r.blob is None for r in page)
        counts, size = (await store.stats())[FILE]
        assert counts == 2 and size > len(payload)
    store_run(scenario)


# ------------------------------------------------------------------ batch lines

def test_claims_take_in_progress_batches_oldest_first(store_run: Run) -> None:
    async def scenario(store: Store, url: str) -> None:
        await store.add([batch("batch_a"), batch("batch_v", "validating"), batch("batch_b")])
        for b in ("batch_a", "batch_v", "batch_b"):
            await store.add_lines(b, lines(b, 3))
        got = await store.claim_lines("w1", 4, 60)
        assert [(line.batch_id, line.index) for line in got] == [("batch_a", 0), ("batch_a", 1), ("batch_a", 2),
                                                                 ("batch_b", 0)]
        assert got[0].custom_id == "req-0" and got[0].body["body"] == {"n": 0}
        got = await store.claim_lines("w2", 10, 60)
        assert [(line.batch_id, line.index) for line in got] == [("batch_b", 1), ("batch_b", 2)]
        assert await store.claim_lines("w3", 10, 60) == []  # batch_v is not in progress
        await store.save(batch("batch_v"))  # its status changes: its lines become claimable
        assert [line.index for line in await store.claim_lines("w3", 10, 60)] == [0, 1, 2]
    store_run(scenario)


def test_leases_run_out_and_lost_workers_cannot_finish(store_run: Run) -> None:
    async def scenario(store: Store, url: str) -> None:
        await store.add([batch("batch_1")])
        await store.add_lines("batch_1", lines("batch_1", 4))
        assert len(await store.claim_lines("w1", 2, 0.3)) == 2
        assert len(await store.claim_lines("w2", 2, 0.3)) == 2  # the other two
        await store.renew("w2", 60)  # w2 keeps its lines alive; w1 (dead) does not
        await asyncio.sleep(0.5)
        retaken = await store.claim_lines("w3", 10, 60)
        assert sorted(line.index for line in retaken) == [0, 1]
        ok = LineResult(0, True, {"id": "batch_req_0", "custom_id": "req-0"})
        assert await store.finish_line("w1", "batch_1", 0, ok) is False  # lost its lease to w3
        assert await store.finish_line("w3", "batch_1", 0, ok) is True
        assert await store.finish_line("w3", "batch_1", 0, ok) is False  # one result per line
        assert await store.finish_line("w2", "batch_1", 2, LineResult(2, False, {"error": "x"})) is True
        # a worker whose lease ran out but nobody took over may still finish
        await store.renew("w2", 0)
        await asyncio.sleep(0.05)
        assert await store.finish_line("w2", "batch_1", 3, LineResult(3, True, {"n": 3})) is True
        counts = await store.line_counts("batch_1")
        assert (counts.total, counts.completed, counts.failed, counts.cancelled, counts.finished) == (4, 2, 1, 0, 3)
        results = await store.line_results("batch_1")
        assert [(r.index, r.ok) for r in results] == [(0, True), (2, False), (3, True)]
        assert results[0].result == {"id": "batch_req_0", "custom_id": "req-0"}
    store_run(scenario)


def test_release_and_cancel(store_run: Run) -> None:
    async def scenario(store: Store, url: str) -> None:
        await store.add([batch("batch_1")])
        await store.add_lines("batch_1", lines("batch_1", 5))
        assert len(await store.claim_lines("w1", 3, 60)) == 3
        await store.release_lines("w1")  # a clean shutdown: the lines are claimable at once
        assert [line.index for line in await store.claim_lines("w2", 2, 60)] == [0, 1]
        assert await store.finish_line("w2", "batch_1", 0, LineResult(0, True, {})) is True
        await store.cancel_lines("batch_1")
        assert await store.finish_line("w2", "batch_1", 1, LineResult(1, True, {})) is False  # cancelled meanwhile
        assert await store.claim_lines("w3", 10, 60) == []
        counts = await store.line_counts("batch_1")
        assert (counts.total, counts.completed, counts.failed, counts.cancelled) == (5, 1, 0, 4)
        assert [r.index for r in await store.line_results("batch_1")] == [0]
        assert await store.line_counts("batch_unknown") == type(counts)()
    store_run(scenario)


def test_concurrent_claims_never_share_a_line(store_run: Run) -> None:
    """Sixteen workers on two store instances (two replicas) claim, finish and sometimes die at once."""
    async def scenario(store: Store, url: str) -> None:
        total = 400
        await store.add([batch("batch_1"), batch("batch_2")])
        await store.add_lines("batch_1", lines("batch_1", total // 2))
        await store.add_lines("batch_2", lines("batch_2", total // 2))
        other = await opened(url)
        held: dict[tuple[str, int], str] = {}  # line -> the worker holding it now
        finished: list[tuple[str, int]] = []
        shared: list[str] = []

        async def worker(name: str, replica: Store) -> None:
            while True:
                got = await replica.claim_lines(name, 3, 60)
                if not got:
                    return
                for line in got:
                    key = (line.batch_id, line.index)
                    if key in held:
                        shared.append(f"{key} claimed by {name} while {held[key]} holds it")
                    held[key] = name
                for line in got:
                    held.pop((line.batch_id, line.index), None)
                    if await replica.finish_line(name, line.batch_id, line.index, LineResult(line.index, True, {})):
                        finished.append((line.batch_id, line.index))
        try:
            await asyncio.gather(*(worker(f"w{i}", store if i % 2 else other) for i in range(16)))
        finally:
            await other.close()
        assert shared == []
        assert len(finished) == total and len(set(finished)) == total
        for b in ("batch_1", "batch_2"):
            counts = await store.line_counts(b)
            assert (counts.total, counts.completed) == (total // 2, total // 2)
    store_run(scenario)


# ------------------------------------------------------------------ operations

def test_sweep_deletes_expired_records_with_children(store_run: Run) -> None:
    async def scenario(store: Store, url: str) -> None:
        now = time.time()
        await store.add([rec(RESPONSE, "resp_old", expires_at=now - 10), rec(RESPONSE_INPUT, "in_1", parent="resp_old"),
                         rec(RESPONSE, "resp_new", expires_at=now + 3600), rec(CONVERSATION, "conv_kept"),
                         Record(BATCH, "batch_old", "alice", {"status": "completed"}, expires_at=now - 1)])
        await store.add_lines("batch_old", lines("batch_old", 2))
        assert await store.sweep(now) == 3  # resp_old, its input item, batch_old
        assert await store.get(RESPONSE, "resp_old", "alice") is None
        assert await store.get(RESPONSE_INPUT, "in_1", "alice") is None
        assert await store.get(RESPONSE, "resp_new", "alice") is not None
        assert await store.get(CONVERSATION, "conv_kept", "alice") is not None
        assert (await store.line_counts("batch_old")).total == 0
        assert await store.sweep(now) == 0
        assert await store.sweep(now + 7200) == 1
    store_run(scenario)


def test_stats_and_counts_by_status(store_run: Run) -> None:
    async def scenario(store: Store, url: str) -> None:
        assert await store.stats() == {}
        await store.add([rec(RESPONSE, "resp_1", data={"text": "x" * 1000}), rec(RESPONSE, "resp_2"),
                         batch("batch_1"), batch("batch_2", "completed"), batch("batch_3", "completed")])
        await store.add_lines("batch_1", lines("batch_1", 3))
        stats = await store.stats()
        assert stats[RESPONSE][0] == 2 and 1000 < stats[RESPONSE][1] < 1100
        assert stats[BATCH][0] == 3
        assert stats["batch_line"][0] == 3 and stats["batch_line"][1] > 0
        assert await store.count_by_status(BATCH) == {"in_progress": 1, "completed": 2}
    store_run(scenario)
