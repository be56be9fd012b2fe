"""Politeness, through a real gateway process: batch lines take only the slots interactive traffic leaves
free (`storage.batches.share`), and a request that finds every slot busy with batch lines gets one at once
(the newest batch line leaves, as a client that hangs up, and runs again later). The scheduling is the
gateway's own, so a recording fake backend stands behind it: batch answers take 1.5 s, streams are fast.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from support.fakebackend import FakeBackend
from support.gateway_process import GatewayProcess

BATCH_S = 1.5


def slow_batch_answers(req: dict[str, Any]) -> tuple[float, str]:
    return (BATCH_S, "a batch answer")  # non-stream requests only: the batch's lines


def start(tmp, share: float) -> tuple[GatewayProcess, FakeBackend]:
    fb = FakeBackend(slots=2, script=slow_batch_answers).start()
    gw = GatewayProcess({"backends": [{"url": fb.url}], "gateway": {"log_json": True},
                         "storage": {"data_dir": str(tmp / f"data-{share}"), "batches": {"share": share}}}, tmp)
    gw.start()
    gw.wait_ready()
    return gw, fb


@pytest.fixture
def full_share(tmp_path) -> Iterator[GatewayProcess]:
    gw, fb = start(tmp_path, 1.0)
    try:
        yield gw
    finally:
        gw.stop()
        fb.stop()


def submit(gw: GatewayProcess, n: int) -> str:
    c = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)
    lines = "".join(json.dumps({"custom_id": f"b{i}", "method": "POST", "url": "/v1/chat/completions",
                                "body": {"model": "youtu-vl", "messages": [{"role": "user", "content": "x"}]}}) + "\n"
                    for i in range(n))
    f = c.files.create(file=("in.jsonl", lines.encode()), purpose="batch")
    return c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h").id


def metric(gw: GatewayProcess, name: str) -> float:
    rows = [r for r in httpx.get(gw.url + "/metrics").text.splitlines() if r.startswith(name + " ")]
    return float(rows[0].split()[1]) if rows else 0.0


def wait_for(check, timeout: float = 20) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline
        time.sleep(0.02)


def first_byte_s(gw: GatewayProcess) -> float:
    started = time.perf_counter()
    with httpx.stream("POST", gw.url + "/v1/chat/completions", timeout=30, json={
            "model": "youtu-vl", "stream": True, "messages": [{"role": "user", "content": "now"}]}) as r:
        assert r.status_code == 200
        for _ in r.iter_raw():
            return time.perf_counter() - started
    raise AssertionError("no answer")


def test_a_request_never_waits_for_a_batch_line(full_share: GatewayProcess) -> None:
    gw = full_share
    batch_id = submit(gw, 6)
    wait_for(lambda: metric(gw, "vlgate_batch_lines_running") == 2)  # every slot holds a batch line
    time.sleep(0.2)
    assert first_byte_s(gw) < 0.5  # not the ~1.5 s a batch line still needs
    assert metric(gw, "vlgate_batch_line_preemptions_total") >= 1
    c = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)
    wait_for(lambda: c.batches.retrieve(batch_id).status == "completed", timeout=60)
    done = c.batches.retrieve(batch_id)
    assert done.request_counts is not None and done.request_counts.completed == 6  # the preempted line ran again
    rows = c.files.content(done.output_file_id or "").text.splitlines()
    assert sorted(json.loads(r)["custom_id"] for r in rows) == [f"b{i}" for i in range(6)]
    access = [json.loads(x) for x in gw.log_path.read_text().splitlines() if x.startswith("{")]
    statuses = [x["status"] for x in access if x.get("route") == "chat" and x.get("stream") is False]  # batch lines
    assert statuses.count(499) >= 1 and statuses.count(200) == 6  # the preempted line left as a client does
    assert 500 not in statuses


def test_batch_lines_keep_to_their_share(tmp_path) -> None:
    gw, fb = start(tmp_path, 0.5)
    try:
        submit(gw, 4)
        wait_for(lambda: metric(gw, "vlgate_batch_lines_running") == 1)
        for _ in range(10):  # one of the two slots, never both
            assert metric(gw, "vlgate_batch_lines_running") <= 1
            assert gw.ready()["in_flight"] <= 1
            time.sleep(0.1)
        assert first_byte_s(gw) < 0.5  # the free slot serves at once; nothing was preempted for it
        assert metric(gw, "vlgate_batch_line_preemptions_total") == 0
    finally:
        gw.stop()
        fb.stop()


def test_cancelled_lines_leave_their_requests_as_clients(full_share: GatewayProcess) -> None:
    gw = full_share
    c = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)
    batch_id = submit(gw, 6)
    wait_for(lambda: metric(gw, "vlgate_batch_lines_running") == 2)
    c.batches.cancel(batch_id)
    wait_for(lambda: metric(gw, "vlgate_batch_lines_running") == 0, timeout=5)  # not the 1.5 s they needed
    assert c.batches.retrieve(batch_id).status == "cancelled"
    time.sleep(0.3)
    access = [json.loads(x) for x in gw.log_path.read_text().splitlines() if x.startswith("{")]
    statuses = [x["status"] for x in access if x.get("route") == "chat" and x.get("stream") is False]
    assert statuses.count(499) == 2 and 500 not in statuses
