"""Model files: local paths, the offline Hugging Face cache, a local stand-in for the hub, clear failures.

No test touches the internet: the cache is built in tmp_path the way huggingface-hub lays it out, and
the "hub" is a small HTTP server on 127.0.0.1 speaking the three endpoints the hub client uses.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from support.llama import free_port
from vlgate.launcher import download
from vlgate.launcher.download import ModelError, fetch
from vlgate.launcher.settings import ModelSource

REPO = "tencent/Youtu-VL-4B-Instruct-GGUF"
MODEL = "Youtu-VL-4B-Instruct-Q8_0.gguf"
MMPROJ = "mmproj-Youtu-VL-4b-Instruct-BF16.gguf"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
# huggingface-hub writes (and can resume from) whole 10 MiB chunks: cut the connection after 1.5 of them
CHUNK = 10 * 1024 * 1024
CUT_AT = CHUNK + CHUNK // 2


def populate_cache(cache: Path, files: dict[str, bytes]) -> Path:
    """The hub cache layout: blobs/<sha256>, snapshots/<commit>/<name> -> blob, refs/main = commit."""
    repo = cache / ("models--" + REPO.replace("/", "--"))
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    snap = repo / "snapshots" / COMMIT
    snap.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snap / name).symlink_to(os.path.relpath(blob, snap))
    return snap


@pytest.fixture
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)


def test_local_paths_skip_the_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    (tmp_path / "p.gguf").write_bytes(b"GGUF")
    monkeypatch.setattr(download, "_verify_names", lambda *a: pytest.fail("the hub was consulted"))
    files = fetch(ModelSource(path=str(tmp_path / "m.gguf"), mmproj=str(tmp_path / "p.gguf")))
    assert files == download.ModelFiles(tmp_path / "m.gguf", tmp_path / "p.gguf")


def test_offline_mode_uses_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    snap = populate_cache(tmp_path / "hub", {MODEL: b"GGUF model", MMPROJ: b"GGUF mmproj"})
    files = fetch(ModelSource(cache_dir=str(tmp_path / "hub")))
    assert files.model == snap / MODEL and files.mmproj == snap / MMPROJ
    assert files.model.read_bytes() == b"GGUF model" and files.mmproj.read_bytes() == b"GGUF mmproj"


def test_offline_with_a_file_missing_names_it_and_the_fixes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    populate_cache(tmp_path / "hub", {MODEL: b"GGUF model"})
    with pytest.raises(ModelError) as err:
        fetch(ModelSource(cache_dir=str(tmp_path / "hub")))
    msg = str(err.value)
    assert msg.startswith(f"model files {MMPROJ} from {REPO} are not in the Hugging Face cache ({tmp_path / 'hub'}) "
                          "and the hub cannot be reached (HF_HUB_OFFLINE is set)")
    assert f"`hf download {REPO} {MMPROJ} --cache-dir {tmp_path / 'hub'}`" in msg
    assert "launcher.model.path and launcher.model.mmproj" in msg and "\n" not in msg


def test_unreachable_hub_falls_back_to_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 no_proxy: None) -> None:
    port = free_port()  # nothing listens there: connection refused, at once
    monkeypatch.setattr(download.hf_constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    snap = populate_cache(tmp_path / "hub", {MODEL: b"m", MMPROJ: b"p"})
    assert fetch(ModelSource(cache_dir=str(tmp_path / "hub"))) == download.ModelFiles(snap / MODEL, snap / MMPROJ)
    with pytest.raises(ModelError) as err:
        fetch(ModelSource(cache_dir=str(tmp_path / "empty")))
    assert f"model files {MODEL}, {MMPROJ} from {REPO} are not in the Hugging Face cache" in str(err.value)
    assert f"the hub cannot be reached (127.0.0.1:{port}: Connection refused)" in str(err.value)


# ---------------------------------------------------------------------- a local stand-in for the hub

class FakeHub:
    """Tree listing, HEAD/GET on resolve/ with Range support; records the requests it saw."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.cut_once: set[str] = set()
        self.requests: list[tuple[str, str, str | None]] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                hub.requests.append(("HEAD", self.path, None))
                self._resolve(head=True)

            def do_GET(self) -> None:
                hub.requests.append(("GET", self.path, self.headers.get("Range")))
                if self.path.startswith(f"/api/models/{REPO}/tree/"):
                    listing = [{"type": "file", "path": n, "size": len(d), "oid": "0"} for n, d in hub.files.items()]
                    self._send(200, json.dumps(listing).encode(), {"Content-Type": "application/json"})
                elif "/resolve/" in self.path:
                    self._resolve(head=False)
                else:
                    self._send(404, b"{}", {})

            def _resolve(self, head: bool) -> None:
                name = self.path.split("/resolve/", 1)[1].split("/", 1)[1]
                data = hub.files.get(name)
                if data is None:
                    return self._send(404, b"", {"X-Error-Code": "EntryNotFound"})
                headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{hashlib.sha256(data).hexdigest()}"'}
                start = 0
                rng = self.headers.get("Range")
                if rng and not head:
                    start = int(rng.split("=")[1].split("-")[0])
                    headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
                if not head and name in hub.cut_once:  # the connection drops half-way, once
                    hub.cut_once.discard(name)
                    self._send(200, data[:CUT_AT], headers, length=len(data))
                    self.close_connection = True
                    return
                self._send(206 if start else 200, data[start:], headers, head=head, length=len(data) - start)

            def _send(self, code: int, body: bytes, headers: dict[str, str], head: bool = False,
                      length: int | None = None) -> None:
                self.send_response(code)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body) if length is None else length))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def fake_hub() -> Iterator[FakeHub]:
    hub = FakeHub({MODEL: b"GGUF" + bytes(range(256)) * (20 * 4096), MMPROJ: b"GGUF" + b"p" * 3000, "README.md": b"x"})
    yield hub
    hub.server.shutdown()


FETCH = """
import json, sys
from vlgate.launcher.download import fetch, ModelError
from vlgate.launcher.settings import ModelSource
try:
    files = fetch(ModelSource.model_validate(json.loads(sys.argv[1])))
    print(json.dumps([str(files.model), str(files.mmproj)]))
except ModelError as exc:
    print("ModelError:", exc)
"""


def fetch_via(hub: FakeHub, source: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """huggingface-hub reads HF_ENDPOINT at import: run the fetch in a fresh interpreter."""
    env = {k: v for k, v in os.environ.items() if "PROXY" not in k.upper() and k != "HF_HUB_OFFLINE"}
    env.update(HF_ENDPOINT=hub.url, HF_HUB_DISABLE_TELEMETRY="1", HF_HOME=str(tmp_path / "hf-home"))
    return subprocess.run([sys.executable, "-c", FETCH, json.dumps(source)], capture_output=True, text=True,
                          env=env, timeout=120)


def test_download_verifies_names_then_resumes_into_the_cache(fake_hub: FakeHub, tmp_path: Path) -> None:
    cache = tmp_path / "hub"
    data = fake_hub.files[MODEL]
    fake_hub.cut_once.add(MODEL)  # the hub client must resume with a Range request

    r = fetch_via(fake_hub, {"cache_dir": str(cache)}, tmp_path)
    assert r.returncode == 0, r.stderr
    model, mmproj = (Path(p) for p in json.loads(r.stdout.strip().splitlines()[-1]))
    assert model == cache / ("models--" + REPO.replace("/", "--")) / "snapshots" / COMMIT / MODEL
    assert model.read_bytes() == data and mmproj.read_bytes() == fake_hub.files[MMPROJ]
    assert ("GET", f"/api/models/{REPO}/tree/main?recursive=true&expand=false", None) in fake_hub.requests
    ranges = [rng for method, path, rng in fake_hub.requests if method == "GET" and path.endswith(MODEL)]
    assert ranges == [None, f"bytes={CHUNK}-"], r.stderr
    assert "Trying to resume download..." in r.stderr
    assert f"[vlgate] model: {REPO}/{MODEL}" in r.stderr

    # second run: served from the cache, no file is transferred again
    fake_hub.requests.clear()
    r = fetch_via(fake_hub, {"cache_dir": str(cache)}, tmp_path)
    assert json.loads(r.stdout.strip().splitlines()[-1]) == [str(model), str(mmproj)]
    assert not [p for m, p, _ in fake_hub.requests if m == "GET" and "/resolve/" in p]


def test_renamed_files_fail_by_name(fake_hub: FakeHub, tmp_path: Path) -> None:
    del fake_hub.files[MMPROJ]
    fake_hub.files["mmproj-Youtu-VL-4B-Instruct-F16.gguf"] = b"GGUF"
    r = fetch_via(fake_hub, {"cache_dir": str(tmp_path / "hub")}, tmp_path)
    assert r.stdout.strip() == (
        f"ModelError: {REPO} has no file {MMPROJ} (its GGUF files: {MODEL}, mmproj-Youtu-VL-4B-Instruct-F16.gguf); "
        "set launcher.model.file / launcher.model.mmproj_file to the new names"
    )
    assert not [p for m, p, _ in fake_hub.requests if "/resolve/" in p]  # failed before downloading anything
