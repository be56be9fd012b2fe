"""/v1/batches through a real gateway process and a real llama-server, with the strict openai SDK: lines
for chat (an image, a preset), Responses and embeddings run as on the live routes; output and error files
in OpenAI's line shapes; exact counts; cancel; list; bad input refused clearly with nothing else lost;
another key's batch or file is an unknown id.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from openai.types import Batch, CreateEmbeddingResponse
from openai.types.chat import ChatCompletion
from openai.types.responses import Response
from PIL import Image

from support.gateway_process import GatewayProcess
from support.images import data_url
from support.llama import LlamaServer
from support.statefulgw import sdk_client

pytestmark = pytest.mark.slow

KEYS = [{"name": "alice", "key": "key-alice"}, {"name": "bob", "key": "key-bob"}]
TERMINAL = {"completed", "failed", "expired", "cancelled"}


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, llama_server_bin, tiny_model) -> Iterator[GatewayProcess]:
    tmp = tmp_path_factory.mktemp("batches")
    # --embeddings --pooling mean: the one server answers chat, Responses and embeddings lines
    server = LlamaServer(llama_server_bin, tiny_model.model, mmproj=tiny_model.mmproj, slots=2, ctx=2048,
                         extra_args=["--jinja", "--embeddings", "--pooling", "mean"], log_dir=tmp / "llama").start()
    config = {"backends": [{"url": server.url}], "gateway": {"api_keys": KEYS},
              "storage": {"data_dir": str(tmp / "data")}}
    gateway = GatewayProcess(config, tmp)
    try:
        gateway.start()
        gateway.wait_ready()
        yield gateway
    finally:
        gateway.stop()
        server.stop()


def client(gw: GatewayProcess, key: str = "key-alice") -> openai.OpenAI:
    return sdk_client(gw, key)


def png() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (96, 64), (20, 160, 40)).save(buf, "PNG")
    return data_url(buf.getvalue())


def chat(custom_id: str, content: Any = "hello", **body: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "youtu-vl", "max_tokens": 4, "messages": [{"role": "user", "content": content}], **body}}


def upload(c: openai.OpenAI, lines: list[dict[str, Any]]) -> str:
    data = "".join(json.dumps(x) + "\n" for x in lines).encode()
    return c.files.create(file=("requests.jsonl", data), purpose="batch").id


def wait(c: openai.OpenAI, batch_id: str, timeout: float = 120) -> Batch:
    deadline = time.monotonic() + timeout
    while True:
        b = c.batches.retrieve(batch_id)
        if b.status in TERMINAL:
            return b
        assert time.monotonic() < deadline, b
        time.sleep(0.2)


def read_lines(c: openai.OpenAI, file_id: str | None) -> dict[str, dict[str, Any]]:
    if file_id is None:
        return {}
    rows = [json.loads(x) for x in c.files.content(file_id).text.splitlines()]
    by_id = {r["custom_id"]: r for r in rows}
    assert len(by_id) == len(rows)  # each custom_id once
    for r in rows:
        assert set(r) == {"id", "custom_id", "response", "error"} and r["id"].startswith("batch_req_")
    return by_id


def run_batch(c: openai.OpenAI, lines: list[dict[str, Any]], endpoint: str = "/v1/chat/completions",
              **extra: Any) -> Batch:
    b = c.batches.create(input_file_id=upload(c, lines), endpoint=endpoint, completion_window="24h",  # type: ignore[arg-type]
                         **extra)
    assert b.object == "batch" and b.status in ("validating", "in_progress") and b.request_counts is not None
    assert b.request_counts.total == len(lines) and b.completion_window == "24h"
    assert b.expires_at == b.created_at + 24 * 3600
    return wait(c, b.id)


def test_chat_lines_images_and_presets(gw: GatewayProcess) -> None:
    c = client(gw)
    image = png()
    lines = [
        chat("plain"),
        chat("image", [{"type": "image_url", "image_url": {"url": image}}, {"type": "text", "text": "hello"}]),
        chat("preset", [{"type": "image_url", "image_url": {"url": image}}], max_tokens=8, preset="detect"),
        chat("virtual-model", [{"type": "image_url", "image_url": {"url": image}}], model="youtu-vl:detect",
             max_tokens=8),
        chat("stream", stream=True),
        chat("bad-image", [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]),
    ]
    b = run_batch(c, lines, metadata={"job": "catalogue"})
    assert b.status == "completed" and b.metadata == {"job": "catalogue"}
    assert b.model is None  # the lines name two models (one a preset's virtual model)
    assert b.request_counts is not None
    assert (b.request_counts.total, b.request_counts.completed, b.request_counts.failed) == (6, 4, 2)
    assert b.in_progress_at and b.finalizing_at and b.completed_at and b.created_at <= b.in_progress_at
    assert b.completed_at >= b.finalizing_at and b.failed_at is None and b.cancelled_at is None
    out, errors = read_lines(c, b.output_file_id), read_lines(c, b.error_file_id)
    assert set(out) == {"plain", "image", "preset", "virtual-model"} and set(errors) == {"stream", "bad-image"}
    bodies = {k: ChatCompletion.model_validate(v["response"]["body"]) for k, v in out.items()}
    for row in out.values():
        assert row["error"] is None and row["response"]["status_code"] == 200 and row["response"]["request_id"]
    assert bodies["image"].usage and bodies["plain"].usage
    assert bodies["image"].usage.prompt_tokens > bodies["plain"].usage.prompt_tokens  # the image reached the model
    for name in ("preset", "virtual-model"):
        ext = out[name]["response"]["body"]["vlgate"]
        assert ext["preset"] == "detect" and ext["image"]["width"] == 96  # parsed and mapped as on the live route
    assert errors["stream"]["response"] is None and "stream" in errors["stream"]["error"]["message"]
    bad = errors["bad-image"]
    assert bad["response"]["status_code"] == 400 and bad["error"]["code"] == bad["response"]["body"]["error"]["code"]
    assert b.usage is not None
    assert b.usage.input_tokens == sum(x.usage.prompt_tokens for x in bodies.values() if x.usage)
    assert b.usage.total_tokens == b.usage.input_tokens + b.usage.output_tokens
    output_file = c.files.retrieve(b.output_file_id or "")
    assert output_file.purpose == "batch_output" and output_file.bytes == len(c.files.content(output_file.id).content)


def test_responses_lines(gw: GatewayProcess) -> None:
    c = client(gw)
    lines = [{"custom_id": f"r{i}", "method": "POST", "url": "/v1/responses",
              "body": {"model": "youtu-vl", "input": f"say {i}", "max_output_tokens": 4}} for i in range(3)]
    b = run_batch(c, lines, "/v1/responses")
    assert b.status == "completed" and b.request_counts and b.request_counts.completed == 3
    assert b.model == "youtu-vl"
    for row in read_lines(c, b.output_file_id).values():
        r = Response.model_validate(row["response"]["body"])
        assert r.object == "response" and r.usage and r.usage.output_tokens == 4
    assert b.error_file_id is None


def test_embeddings_lines(gw: GatewayProcess) -> None:
    c = client(gw)
    lines = [{"custom_id": f"e{i}", "method": "POST", "url": "/v1/embeddings",
              "body": {"model": "youtu-vl", "input": ["a cat", f"number {i}"]}} for i in range(3)]
    b = run_batch(c, lines, "/v1/embeddings")
    assert b.status == "completed" and b.request_counts and b.request_counts.completed == 3
    for row in read_lines(c, b.output_file_id).values():
        e = CreateEmbeddingResponse.model_validate(row["response"]["body"])
        assert len(e.data) == 2 and len(e.data[0].embedding) > 0


def test_cancel(gw: GatewayProcess) -> None:
    c = client(gw)
    lines = [chat(f"c{i}", max_tokens=200) for i in range(100)]
    created = c.batches.create(input_file_id=upload(c, lines), endpoint="/v1/chat/completions",
                               completion_window="24h")
    deadline = time.monotonic() + 60
    while (counts := c.batches.retrieve(created.id).request_counts) and counts.completed < 2:  # mid-way
        assert time.monotonic() < deadline
        time.sleep(0.05)
    cancelling = c.batches.cancel(created.id)
    assert cancelling.status in ("cancelling", "cancelled") and cancelling.cancelling_at
    b = wait(c, created.id)
    assert b.status == "cancelled" and b.cancelled_at and b.request_counts
    done = b.request_counts.completed + b.request_counts.failed
    assert b.request_counts.total == 100 and 2 <= done < 100
    assert len(read_lines(c, b.output_file_id)) == b.request_counts.completed
    time.sleep(1.5)  # lines that were in flight at the cancel are never recorded
    assert c.batches.retrieve(b.id).request_counts == b.request_counts
    assert c.batches.cancel(b.id).status == "cancelled"  # again: the same answer
    finished = run_batch(c, [chat("one")])
    with pytest.raises(openai.ConflictError) as exc:
        c.batches.cancel(finished.id)
    assert exc.value.body["code"] == "batch_not_cancellable"  # type: ignore[index]


def test_list(gw: GatewayProcess) -> None:
    c = client(gw)
    made = [run_batch(c, [chat(f"l{i}")]).id for i in range(2)]
    listed = [b.id for b in c.batches.list(limit=1)]  # pages followed by the SDK, newest first
    assert listed[:2] == made[::-1]
    page = c.batches.list(limit=1)
    assert page.has_more is True and page.data[0].id == made[-1] and page.data[0].status == "completed"


@pytest.mark.parametrize(("change", "param", "status"), [
    ({"endpoint": "/v1/batches"}, "endpoint", 400),
    ({"endpoint": "/v1/completions"}, "endpoint", 400),
    ({"completion_window": "1h"}, "completion_window", 400),
    ({"input_file_id": "file-unknown"}, "input_file_id", 404),
    ({"metadata": {"k": "v" * 600}}, "metadata", 400),
    ({"surprise": 1}, "surprise", 400),
])
def test_bad_create(gw: GatewayProcess, change: dict[str, Any], param: str, status: int) -> None:
    c = client(gw)
    file_id = upload(c, [chat("x")])
    before = [b.id for b in c.batches.list()]
    body = {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h", **change}
    with pytest.raises(openai.APIStatusError) as exc:
        c.post("/batches", cast_to=Batch, body=body)
    assert exc.value.status_code == status and exc.value.body["param"] == param  # type: ignore[index]
    assert set(exc.value.body) == {"message", "type", "param", "code"}  # type: ignore[arg-type]
    assert [b.id for b in c.batches.list()] == before  # nothing made
    assert c.files.retrieve(file_id).id == file_id  # nothing lost


def test_file_that_does_not_fit_the_batch(gw: GatewayProcess) -> None:
    c = client(gw)
    before = [b.id for b in c.batches.list()]
    mixed = upload(c, [chat("a"), {"custom_id": "b", "method": "POST", "url": "/v1/embeddings",
                                   "body": {"input": "x"}}])
    with pytest.raises(openai.BadRequestError) as exc:
        c.batches.create(input_file_id=mixed, endpoint="/v1/chat/completions", completion_window="24h")
    assert "Line 2:" in exc.value.message and exc.value.body["code"] == "mismatched_url"  # type: ignore[index]
    other = c.files.create(file=("notes.txt", b"hello"), purpose="user_data")
    with pytest.raises(openai.BadRequestError) as exc:
        c.batches.create(input_file_id=other.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert exc.value.body["code"] == "invalid_file_purpose"  # type: ignore[index]
    assert [b.id for b in c.batches.list()] == before


def test_another_keys_batch_and_file_are_unknown(gw: GatewayProcess) -> None:
    alice, bob = client(gw), client(gw, "key-bob")
    file_id = upload(alice, [chat("a")])
    b = run_batch(alice, [chat("mine")])
    for call, own, unknown in ((bob.batches.retrieve, b.id, "batch_" + "0" * 24),
                               (bob.batches.cancel, b.id, "batch_" + "0" * 24),
                               (bob.files.content, b.output_file_id, "file-" + "0" * 24)):
        with pytest.raises(openai.NotFoundError) as foreign:
            call(own)
        with pytest.raises(openai.NotFoundError) as missing:
            call(unknown)
        assert json.dumps(foreign.value.body).replace(str(own), unknown) == json.dumps(missing.value.body)
    with pytest.raises(openai.NotFoundError) as exc:  # a batch on another key's file: as on an unknown file
        bob.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")
    assert exc.value.body["param"] == "input_file_id"  # type: ignore[index]
    assert b.id not in [x.id for x in bob.batches.list()]
    assert alice.batches.retrieve(b.id).status == "completed"
