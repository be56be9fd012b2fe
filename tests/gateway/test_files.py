"""/v1/files through a real gateway process with the strict openai SDK: upload as the SDK sends it, list
(purpose, order, paging), retrieve, content, delete; batch input checked at upload with the bad line named;
the front door's limits on uploads (size, bytes held, body time); another key's file is an unknown id.

Files are the gateway's own (nothing reaches a backend), so a recording fake backend stands behind it.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from support.fakebackend import FakeBackend
from support.gateway_process import GatewayProcess
from support.statefulgw import sdk_client

MAX_FILE = 600_000
MAX_LINE = 20_000  # the gateway's max_body_bytes: a line longer than this could never be sent
KEYS = [{"name": "alice", "key": "key-alice"}, {"name": "bob", "key": "key-bob"}]


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    tmp = tmp_path_factory.mktemp("files")
    fb = FakeBackend().start()
    config = {"backends": [{"url": fb.url}],
              "gateway": {"api_keys": KEYS, "max_body_bytes": MAX_LINE,
                          "limits": {"max_buffered_bytes": 1024 * 1024, "body_timeout_s": 1.0}},
              "storage": {"data_dir": str(tmp / "data"), "batches": {"max_file_bytes": MAX_FILE, "max_lines": 50}}}
    gateway = GatewayProcess(config, tmp)
    try:
        gateway.start()
        gateway.wait_ready()
        yield gateway
    finally:
        gateway.stop()
        fb.stop()


def client(gw: GatewayProcess, key: str = "key-alice") -> openai.OpenAI:
    return sdk_client(gw, key)


def line(i: int, **changes: Any) -> dict[str, Any]:
    return {"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "youtu-vl", "messages": [{"role": "user", "content": f"hello {i}"}]}, **changes}


def jsonl(lines: list[Any]) -> bytes:
    return b"".join((x if isinstance(x, bytes) else json.dumps(x).encode()) + b"\n" for x in lines)


def file_ids(gw: GatewayProcess, key: str = "key-alice") -> list[str]:
    return [f.id for f in client(gw, key).files.list()]


def test_upload_list_retrieve_content_delete(gw: GatewayProcess) -> None:
    c = client(gw)
    data = jsonl([line(i) for i in range(3)])
    f = c.files.create(file=("requests.jsonl", data), purpose="batch")
    assert f.object == "file" and f.purpose == "batch" and f.bytes == len(data) and f.filename == "requests.jsonl"
    assert f.id.startswith("file-") and f.status == "processed"
    assert f.expires_at is not None and f.expires_at - f.created_at == 30 * 86400  # retention.files_s
    assert c.files.retrieve(f.id) == f
    assert c.files.content(f.id).content == data
    assert f.id in file_ids(gw)
    deleted = c.files.delete(f.id)
    assert deleted.id == f.id and deleted.deleted is True and deleted.object == "file"
    assert f.id not in file_ids(gw)
    with pytest.raises(openai.NotFoundError):
        c.files.retrieve(f.id)
    with pytest.raises(openai.NotFoundError):
        c.files.delete(f.id)


def test_list_by_purpose_order_and_pages(gw: GatewayProcess) -> None:
    c = client(gw, "key-bob")  # bob's files only: alice's tests do not disturb the pages
    made = [c.files.create(file=(f"f{i}.jsonl", jsonl([line(i)])), purpose="batch") for i in range(3)]
    other = c.files.create(file=("notes.txt", b"any bytes \x00\xff"), purpose="user_data",
                           expires_after={"anchor": "created_at", "seconds": 7200})
    assert other.purpose == "user_data" and other.expires_at == other.created_at + 7200
    batch_ids = [f.id for f in made]
    listed = c.files.list(purpose="batch", limit=1, order="asc")  # the SDK follows `after` page by page
    assert [f.id for f in listed] == batch_ids
    first = c.files.list(purpose="batch", limit=2, order="desc")
    assert [f.id for f in first.data] == batch_ids[::-1][:2] and first.has_more is True
    assert [f.id for f in c.files.list(order="desc").data][:4] == [other.id, *batch_ids[::-1]]
    assert [f.id for f in c.files.list(purpose="user_data").data] == [other.id]
    assert c.files.content(other.id).content == b"any bytes \x00\xff"
    for f in (*made, other):
        c.files.delete(f.id)


@pytest.mark.parametrize(("lines", "line_no", "code", "words"), [
    ([line(0), b'{"custom_id": "x", "method": "POST",'], 2, "invalid_json", "not valid JSON"),
    ([line(0, url="/v1/batches")], 1, "unsupported_url", "/v1/batches"),
    ([line(0, url="/v1/images/generations")], 1, "unsupported_url", "/v1/chat/completions"),
    ([line(0), line(1), line(0)], 3, "duplicate_custom_id", "req-0"),
    ([line(0), b"\xff\xfe not utf-8"], 2, "invalid_encoding", "UTF-8"),
    ([b"[1, 2]"], 1, "invalid_batch_input", "JSON object"),
    ([line(0, method="GET")], 1, "invalid_batch_input", "POST"),
    ([line(0, body="text")], 1, "invalid_batch_input", "body"),
    ([line(0, custom_id=7)], 1, "invalid_batch_input", "custom_id"),
    ([line(0, extra=1)], 1, "invalid_batch_input", "extra"),
    ([line(0), line(1, body={"messages": [{"role": "user", "content": "x" * MAX_LINE}]})], 2, "line_too_large",
     "max_body_bytes"),
    ([line(i) for i in range(51)], 51, "too_many_lines", "max_lines"),
])
def test_bad_batch_input_names_the_line(gw: GatewayProcess, lines: list[Any], line_no: int, code: str,
                                        words: str) -> None:
    before = file_ids(gw)
    with pytest.raises(openai.BadRequestError) as exc:
        client(gw).files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
    error = exc.value.body
    assert isinstance(error, dict) and set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code and error["param"] == "file" and error["type"] == "invalid_request_error"
    assert f"Line {line_no}:" in error["message"] and words in error["message"]
    assert exc.value.response.headers.get("x-should-retry") != "true"
    assert file_ids(gw) == before  # nothing stored


def test_empty_file_and_blank_lines(gw: GatewayProcess) -> None:
    with pytest.raises(openai.BadRequestError, match="empty"):
        client(gw).files.create(file=("in.jsonl", b"\n \n"), purpose="batch")
    ok = client(gw).files.create(file=("in.jsonl", b"\n" + jsonl([line(0)]) + b"\n\n"), purpose="batch")
    client(gw).files.delete(ok.id)


def test_bad_purpose_and_forms(gw: GatewayProcess) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        client(gw).files.create(file=("a.txt", b"x"), purpose="evals")  # type: ignore[arg-type]
    assert exc.value.body["param"] == "purpose"  # type: ignore[index]
    auth = {"Authorization": "Bearer key-alice"}
    r = httpx.post(gw.url + "/v1/files", json={"purpose": "batch"}, headers=auth)
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"
    r = httpx.post(gw.url + "/v1/files", data={"purpose": "batch"}, files={"other": ("a", b"x")}, headers=auth)
    assert r.status_code == 400 and r.json()["error"]["param"] == "other"
    r = httpx.post(gw.url + "/v1/files", data={"purpose": "batch"}, headers={**auth,
                   "Content-Type": "multipart/form-data; boundary=x"})
    assert r.status_code == 400 and r.json()["error"]["code"] in ("missing_file", "invalid_multipart")
    r = httpx.post(gw.url + "/v1/files", files={"file": ("a", b"x")}, headers={**auth,
                   "Content-Type": "multipart/form-data"})  # no boundary
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_multipart"
    r = httpx.post(gw.url + "/v1/files", files={"file": ("a", b"x")}, data={"purpose": "batch"})
    assert r.status_code == 401


def test_oversize_upload_is_413_before_reading(gw: GatewayProcess) -> None:
    before = file_ids(gw)
    with pytest.raises(openai.APIStatusError) as exc:
        client(gw).files.create(file=("big.bin", b"x" * (MAX_FILE + 70_000)), purpose="user_data")
    assert exc.value.status_code == 413 and exc.value.body["code"] == "file_too_large"  # type: ignore[index]
    # sent chunked (no Content-Length): counted as it arrives, refused once past the limit
    body = b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n\r\n" + b"y" * (MAX_FILE + 70_000)
    r = httpx.post(gw.url + "/v1/files", content=iter([body[i:i + 65536] for i in range(0, len(body), 65536)]),
                   headers={"Authorization": "Bearer key-alice", "Content-Type": "multipart/form-data; boundary=b"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "file_too_large"
    # within the whole form's allowance but over the file's own limit
    with pytest.raises(openai.APIStatusError) as exc:
        client(gw).files.create(file=("big.bin", b"x" * (MAX_FILE + 10)), purpose="user_data")
    assert exc.value.status_code == 413
    assert file_ids(gw) == before


def test_uploads_count_against_the_bytes_held(gw: GatewayProcess) -> None:
    """Two uploads that together pass the gateway's bytes-held budget (1 MiB): the second waits its turn
    (503 + Retry-After) while the first is held; each alone succeeds, one after the other (released)."""
    data = jsonl([line(i, body={"model": "m", "messages": [{"role": "user", "content": "z" * 11_000}]})
                  for i in range(50)])
    assert 520_000 < len(data) < MAX_FILE
    head = (b"--b\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n"
            b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jsonl\"\r\n\r\n")
    tail = b"\r\n--b--\r\n"
    with socket.create_connection(("127.0.0.1", gw.port)) as slow:  # declares ~0.55 MB, sends only the head
        slow.sendall(b"POST /v1/files HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer key-alice\r\n"
                     b"Content-Type: multipart/form-data; boundary=b\r\n"
                     b"Content-Length: " + str(len(head) + len(data) + len(tail)).encode() + b"\r\n\r\n" + head)
        time.sleep(0.3)
        with pytest.raises(openai.APIStatusError) as exc:
            client(gw).files.create(file=("b.jsonl", data), purpose="batch")
        assert exc.value.status_code == 503 and exc.value.body["code"] == "server_busy"  # type: ignore[index]
        assert exc.value.response.headers["retry-after"]
        slow.settimeout(5)
        answer = b""  # the stalled body's 408 after body_timeout_s (1 s); its head and body may come apart
        while b"request_timeout" not in answer:
            got = slow.recv(65536)
            if not got:
                break
            answer += got
        assert answer.startswith(b"HTTP/1.1 408") and b"request_timeout" in answer
    for _ in range(3):  # its bytes were given back: full uploads pass one after another
        f = client(gw).files.create(file=("b.jsonl", data), purpose="batch")
        assert client(gw).files.content(f.id).content == data
        client(gw).files.delete(f.id)


def test_another_keys_file_is_an_unknown_id(gw: GatewayProcess) -> None:
    f = client(gw).files.create(file=("mine.jsonl", jsonl([line(0)])), purpose="batch")
    bob = client(gw, "key-bob")
    unknown = "file-" + "0" * 24
    for call in (bob.files.retrieve, bob.files.content, bob.files.delete):
        with pytest.raises(openai.NotFoundError) as foreign:
            call(f.id)
        with pytest.raises(openai.NotFoundError) as missing:
            call(unknown)
        assert foreign.value.status_code == missing.value.status_code == 404
        assert json.dumps(foreign.value.body).replace(f.id, unknown) == json.dumps(missing.value.body)
    assert f.id not in file_ids(gw, "key-bob")
    assert client(gw).files.retrieve(f.id).id == f.id  # still there for its owner
    client(gw).files.delete(f.id)


def test_store_files_survive_a_restart(gw: GatewayProcess) -> None:
    """The embedded store is a file in the data dir: a gateway started again on it finds the upload."""
    f = client(gw).files.create(file=("keep.jsonl", jsonl([line(0)])), purpose="batch")
    gw.stop()
    gw.start()
    gw.wait_ready()
    assert client(gw).files.content(f.id).content == jsonl([line(0)])
    client(gw).files.delete(f.id)
