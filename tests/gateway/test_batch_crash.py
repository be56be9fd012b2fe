"""Durability: a gateway killed with SIGKILL mid-batch and started again on the same data dir (embedded
SQLite) resumes the batch on its own and finishes it; every custom_id appears exactly once in the output,
and the lines that were in flight at the kill (still leased to the dead worker right after it: no one may
claim them) are run again once their lease (`storage.batches.lease_s`, short here) runs out. Real
llama-server, real gateway processes.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from typing import Any

import openai
import pytest

from support.gateway_process import GatewayProcess
from support.llama import LlamaServer
from vlgate.store import new_store
from vlgate.store.settings import StorageSettings

pytestmark = pytest.mark.slow

LINES = 80
LEASE_S = 4.0


def request_prefix(request_id: str) -> str:
    """The gateway process that ran a line: request ids start with a random per-process prefix."""
    return request_id[:8]


def test_sigkill_mid_batch_resumes_and_finishes_exactly_once(tmp_path, llama_server_bin, tiny_model) -> None:
    server = LlamaServer(llama_server_bin, tiny_model.model, slots=2, ctx=2048, extra_args=["--jinja"],
                         log_dir=tmp_path / "llama").start()
    config = {"backends": [{"url": server.url}],
              "storage": {"data_dir": str(tmp_path / "data"), "batches": {"share": 1.0, "lease_s": LEASE_S}}}
    gw = GatewayProcess(config, tmp_path)
    try:
        gw.start()
        gw.wait_ready()
        c = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", _strict_response_validation=True, max_retries=2)
        lines = [{"custom_id": f"line-{i}", "method": "POST", "url": "/v1/chat/completions",
                  "body": {"model": "youtu-vl", "max_tokens": 48, "messages": [{"role": "user", "content": f"n {i}"}]}}
                 for i in range(LINES)]
        f = c.files.create(file=("in.jsonl", "".join(json.dumps(x) + "\n" for x in lines).encode()), purpose="batch")
        batch = c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
        deadline = time.monotonic() + 120
        while (counts := c.batches.retrieve(batch.id).request_counts) and counts.completed < LINES // 4:
            assert time.monotonic() < deadline, counts
            time.sleep(0.05)
        # kill while the worker holds lines (between two claims it may hold none for a moment)
        while asyncio.run(still_leased(config, batch.id)) < 1:
            assert time.monotonic() < deadline, "the worker never held a line"
            time.sleep(0.01)
        gw.stop(signal.SIGKILL)  # no clean shutdown: its claimed lines stay leased to a dead worker
        leased = asyncio.run(still_leased(config, batch.id))
        assert leased >= 1, "no line was in flight at the kill: the test would not show a re-run"

        gw.start()  # the same config: the same data dir, the same port
        resumed = wait_done(c, batch.id)
        assert resumed.status == "completed", resumed
        assert resumed.request_counts is not None
        assert (resumed.request_counts.total, resumed.request_counts.completed,
                resumed.request_counts.failed) == (LINES, LINES, 0)  # re-run lines counted once
        assert resumed.error_file_id is None
        rows = [json.loads(x) for x in c.files.content(resumed.output_file_id or "").text.splitlines()]
        assert sorted(r["custom_id"] for r in rows) == sorted(x["custom_id"] for x in lines)  # each exactly once
        prefixes = {request_prefix(r["response"]["request_id"]) for r in rows}
        assert len(prefixes) == 2, prefixes  # the killed gateway ran some, the restarted one the rest
    finally:
        gw.stop()
        server.stop()


async def still_leased(config: dict[str, Any], batch_id: str) -> int:
    """Lines of the batch neither finished nor claimable now: those the killed worker held, under lease.
    Asked through the store's own interface: what any worker may claim is claimed, and given back."""
    store = new_store(StorageSettings.model_validate(config["storage"]).resolved_url())
    await store.start()
    try:
        claimable = await store.claim_lines("probe", LINES, 60)
        await store.release_lines("probe")
        counts = await store.line_counts(batch_id)
        assert counts.finished < LINES, "the batch finished before the kill: grow it"
        return counts.total - counts.finished - sum(line.batch_id == batch_id for line in claimable)
    finally:
        await store.close()


def wait_done(c: openai.OpenAI, batch_id: str, timeout: float = 180) -> openai.types.Batch:
    deadline = time.monotonic() + timeout
    while True:
        b = c.batches.retrieve(batch_id)
        if b.status in ("completed", "failed", "expired", "cancelled"):
            return b
        assert time.monotonic() < deadline, b
        time.sleep(0.2)
