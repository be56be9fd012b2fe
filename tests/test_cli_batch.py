"""`vlgate batch` end to end against a real `vlgate serve` (its backend answers like the model, scripted):
a folder of images with a preset, a JSONL file as given, a bad file named by line, --resume, the
OPENAI_BASE_URL / OPENAI_API_KEY fallbacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from PIL import Image

from support.fakebackend import FakeBackend
from support.gateway_process import GatewayProcess

BOX = "<ref>thing</ref><box><x_64><y_64><x_192><y_192></box>"
KEY = "sekret"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    tmp = tmp_path_factory.mktemp("gateway")
    fb = FakeBackend(reply=BOX, slots=4).start()
    gw = GatewayProcess({"backends": [{"url": fb.url}], "gateway": {"api_keys": [KEY]},
                         "storage": {"data_dir": str(tmp / "data")}}, tmp)
    try:
        gw.start()
        gw.wait_ready()
        yield gw
    finally:
        gw.stop()
        fb.stop()


def vlgate_batch(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "VLGATE_URL",
                                                               "VLGATE_API_KEY")}
    return subprocess.run([sys.executable, "-m", "vlgate.cli", "batch", *args, "--poll", "0.1"], capture_output=True,
                          text=True, cwd=cwd, timeout=120, check=False, env={**clean, **(env or {})})


def photos(folder: Path, n: int) -> list[Path]:
    folder.mkdir()
    paths = []
    for i in range(n):
        path = folder / f"p{i}.png"
        Image.new("RGB", (256, 256), (i * 40, 100, 100)).save(path)
        paths.append(path)
    (folder / "notes.txt").write_text("not an image")
    return paths


def results(path: Path) -> list[dict[str, object]]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_a_folder_with_a_preset(gateway: GatewayProcess, tmp_path: Path) -> None:
    paths = photos(tmp_path / "shots", 3)
    r = vlgate_batch("shots", "--preset", "detect", "--url", gateway.url, "--key", KEY, "--out", "out/r.jsonl",
                     cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "completed: 3 succeeded, 0 failed -> out/r.jsonl" in r.stderr and "batch_" in r.stderr
    rows = results(tmp_path / "out" / "r.jsonl")
    assert [row["custom_id"] for row in rows] == [str(Path("shots") / p.name) for p in paths]  # input order
    for row in rows:
        body = row["response"]["body"]  # type: ignore[index]
        (box,) = body["vlgate"]["boxes"]
        assert box["label"] == "thing" and body["vlgate"]["preset"] == "detect"
        assert "overlay" not in body["vlgate"]  # no pictures in a results file


def test_a_jsonl_file_as_given_with_env_fallbacks(gateway: GatewayProcess, tmp_path: Path) -> None:
    lines = [{"custom_id": "ok", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": "youtu-vl", "messages": [{"role": "user", "content": "hi"}]}},
             {"custom_id": "streamed", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": "youtu-vl", "stream": True, "messages": [{"role": "user", "content": "hi"}]}}]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    r = vlgate_batch("in.jsonl", cwd=tmp_path, env={"OPENAI_BASE_URL": gateway.url + "/v1", "OPENAI_API_KEY": KEY})
    assert r.returncode == 1, r.stderr  # one request failed: its error line is in the results
    rows = results(tmp_path / "results.jsonl")
    assert [row["custom_id"] for row in rows] == ["ok", "streamed"]
    assert rows[0]["error"] is None and rows[1]["response"] is None and rows[1]["error"]


def test_a_bad_file_is_named_by_line(gateway: GatewayProcess, tmp_path: Path) -> None:
    (tmp_path / "in.jsonl").write_text('{"custom_id": "a", "method": "POST", "url": "/v1/embeddings", '
                                       '"body": {"input": "x"}}\n{"custom_id": "b", "method": "POST", "url": "/v1/x",'
                                       ' "body": {}}\n')
    r = vlgate_batch("in.jsonl", "--url", gateway.url, "--key", KEY, cwd=tmp_path)
    assert r.returncode == 2 and "Line 2:" in r.stderr and "/v1/x" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "results.jsonl").exists()


def test_usage_errors_are_one_line(gateway: GatewayProcess, tmp_path: Path) -> None:
    photos(tmp_path / "shots", 1)
    r = vlgate_batch("shots", "--url", gateway.url, "--key", KEY, cwd=tmp_path)
    assert r.returncode == 2 and "--preset" in r.stderr and "Traceback" not in r.stderr
    r = vlgate_batch("empty-folder-missing", "--prompt", "x", "--url", gateway.url, "--key", KEY, cwd=tmp_path)
    assert r.returncode == 2 and "cannot read empty-folder-missing" in r.stderr
    r = vlgate_batch("shots", "--prompt", "what is it?", "--url", gateway.url, "--key", "wrong", cwd=tmp_path)
    assert r.returncode == 2 and "401" in r.stderr and "Traceback" not in r.stderr


def test_resume_downloads_a_batch_made_earlier(gateway: GatewayProcess, tmp_path: Path) -> None:
    c = openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0)
    data = json.dumps({"custom_id": "x", "method": "POST", "url": "/v1/chat/completions",
                       "body": {"model": "youtu-vl", "messages": [{"role": "user", "content": "hi"}]}}) + "\n"
    f = c.files.create(file=("in.jsonl", data.encode()), purpose="batch")
    b = c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    r = vlgate_batch("--resume", b.id, "--url", gateway.url, "--key", KEY, "--out", "again.jsonl", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert [row["custom_id"] for row in results(tmp_path / "again.jsonl")] == ["x"]
