"""Fleet-wide: two gateway processes on one real PostgreSQL, in front of the same two llama-servers. Both work
one batch (each line's request id names the process that ran it); one is killed with SIGKILL mid-batch and
the batch still completes, each line exactly once. A response stored through one replica is retrieved and
continued through the other.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from support.gateway_process import GatewayProcess
from support.llama import LlamaServer
from support.postgres import postgres_server, postgres_url  # noqa: F401  (fixtures)
from support.statefulgw import sdk_client

pytestmark = pytest.mark.slow

LINES = 200  # enough that the slower replica (a loaded CI machine) still has lines left when it is killed
KEYS = [{"name": "alice", "key": "key-alice"}]


@pytest.fixture
def replicas(tmp_path, llama_server_bin, tiny_model, postgres_url: str) -> Iterator[list[GatewayProcess]]:  # noqa: F811
    servers = [LlamaServer(llama_server_bin, tiny_model.model, slots=2, ctx=2048, extra_args=["--jinja"],
                           log_dir=tmp_path / f"llama-{i}").start() for i in range(2)]
    config = {"backends": [{"url": s.url} for s in servers], "gateway": {"api_keys": KEYS},
              "storage": {"url": postgres_url, "batches": {"lease_s": 4.0}}}
    gateways = [GatewayProcess(config, tmp_path) for _ in range(2)]
    try:
        for gw in gateways:  # migrations run once, whichever starts first
            gw.start()
            gw.wait_ready(backends=2)
        yield gateways
    finally:
        for gw in gateways:
            gw.stop()
        for server in servers:
            server.stop()


def client(gw: GatewayProcess) -> openai.OpenAI:
    return sdk_client(gw, "key-alice", max_retries=2)


def process_prefix(gw: GatewayProcess) -> str:
    """The random prefix of every request id this gateway process makes."""
    r = httpx.post(gw.url + "/v1/chat/completions", json={"messages": "not a list"},
                   headers={"Authorization": "Bearer key-alice"})
    assert r.status_code == 400
    return r.headers["x-request-id"][:8]


def lines_run(gw: GatewayProcess) -> float:
    """Batch lines this replica finished (its `vlgate_batch_lines` counter)."""
    text = httpx.get(gw.url + "/metrics", timeout=5).text
    return sum(float(row.rsplit(" ", 1)[1]) for row in text.splitlines()
               if row.startswith("vlgate_batch_lines_total{"))


def test_two_replicas_work_one_batch_and_survive_one_dying(replicas: list[GatewayProcess]) -> None:
    a, b = replicas
    prefixes = {process_prefix(a): "a", process_prefix(b): "b"}
    assert len(prefixes) == 2
    ca = client(a)
    lines = [{"custom_id": f"line-{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": "youtu-vl", "max_tokens": 48, "messages": [{"role": "user", "content": f"n {i}"}]}}
             for i in range(LINES)]
    f = ca.files.create(file=("in.jsonl", "".join(json.dumps(x) + "\n" for x in lines).encode()), purpose="batch")
    batch = ca.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert client(b).batches.retrieve(batch.id).id == batch.id  # one store: either replica answers for it
    deadline = time.monotonic() + 120
    while lines_run(b) < 3:  # b has run lines of its own (its /metrics), and more wait
        assert time.monotonic() < deadline, b.log()
        time.sleep(0.05)
    counts = ca.batches.retrieve(batch.id).request_counts
    b.stop(signal.SIGKILL)
    assert counts is not None and counts.completed < LINES, "the batch finished before the kill: grow it"

    deadline = time.monotonic() + 180
    while (done := ca.batches.retrieve(batch.id)).status not in ("completed", "failed", "expired", "cancelled"):
        assert time.monotonic() < deadline, done
        time.sleep(0.2)
    assert done.status == "completed" and done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (LINES, LINES, 0)
    rows = [json.loads(x) for x in ca.files.content(done.output_file_id or "").text.splitlines()]
    assert sorted(r["custom_id"] for r in rows) == sorted(x["custom_id"] for x in lines)  # exactly once each
    ran = {prefixes.get(r["response"]["request_id"][:8], "?") for r in rows}
    assert ran == {"a", "b"}, ran  # both replicas took lines; nothing ran anywhere else


def test_a_response_stored_through_one_replica_continues_through_the_other(replicas: list[GatewayProcess]) -> None:
    a, b = replicas
    first = client(a).responses.create(model="youtu-vl", input="remember the word teal", max_output_tokens=4)
    again = client(b).responses.retrieve(first.id)
    assert again.id == first.id and again.output_text == first.output_text
    follow = client(b).responses.create(model="youtu-vl", input="which word?", max_output_tokens=4,
                                        previous_response_id=first.id)
    assert follow.previous_response_id == first.id
    items = client(a).responses.input_items.list(follow.id)
    assert any(getattr(x, "type", None) == "message" for x in items.data)
    assert follow.usage is not None and first.usage is not None
    assert follow.usage.input_tokens > first.usage.input_tokens  # the stored turn was chained in front
