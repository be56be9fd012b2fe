"""Images through the gateway to a real llama-server (tiny mmproj): only normalized data URLs reach it."""

from __future__ import annotations

import base64
import http.server
import io
import json
import threading
from pathlib import Path

import httpx
import pytest
from PIL import Image

from support.fakebackend import FakeBackend
from support.gateway_process import GatewayProcess
from support.stack import stopped_at_exit

pytestmark = pytest.mark.slow


def encoded(fmt: str, size: tuple[int, int] = (300, 200), mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, (120, 40, 200) if mode == "RGB" else 128).save(buf, fmt)
    return buf.getvalue()


class _ImageServer:
    """A local image host that counts who fetched what."""

    def __init__(self, payload: bytes, ctype: str) -> None:
        self.hits = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.hits += 1
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/cat.webp"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()


def chat(gw: GatewayProcess, url: str) -> httpx.Response:
    return httpx.post(gw.url + "/v1/chat/completions", timeout=60, json={
        "model": "youtu-vl", "max_tokens": 3,
        "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                  {"type": "text", "text": "what is it?"}]}]})


@pytest.mark.parametrize("fmt", ["WEBP", "TIFF", "BMP", "GIF", "PNG", "JPEG"])
def test_formats_llama_server_cannot_read_still_work(llama_server, tmp_path: Path, fmt: str) -> None:
    srv = llama_server(slots=1, ctx=1024, mmproj=True)
    gw = GatewayProcess({"backends": [{"url": srv.url}]}, tmp_path).start()
    try:
        gw.wait_ready()
        data = "data:application/octet-stream;base64," + base64.b64encode(encoded(fmt)).decode()
        r = chat(gw, data)
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] == 3
    finally:
        gw.stop()


def test_url_is_fetched_once_by_the_gateway_never_by_llama_server(llama_server, tmp_path: Path) -> None:
    host = _ImageServer(encoded("WEBP", (500, 333)), "image/webp")
    srv = llama_server(slots=1, ctx=1024, mmproj=True)
    gw = GatewayProcess({"backends": [{"url": srv.url}],
                         "images": {"fetch": {"allow_private_networks": True}}}, tmp_path).start()
    try:
        gw.wait_ready()
        r = chat(gw, host.url)
        assert r.status_code == 200, r.text
        assert host.hits == 1
        r = chat(gw, host.url)  # the second identical request: fetched again (URLs may change), decoded once
        assert r.status_code == 200
    finally:
        gw.stop()
        host.close()


def test_backend_receives_only_grid_sized_data_urls(tmp_path: Path) -> None:
    fb = FakeBackend().start()
    host = _ImageServer(encoded("PNG", (1000, 700)), "image/png")
    gw = GatewayProcess({"backends": [{"url": fb.url}],
                         "images": {"fetch": {"allow_private_networks": True}}}, tmp_path).start()
    try:
        gw.wait_ready()
        assert chat(gw, host.url).status_code == 200
        body = json.loads(fb.chat_requests()[-1].body)
        url = body["messages"][0]["content"][0]["image_url"]["url"]
        assert url.startswith("data:image/")
        assert host.url not in fb.chat_requests()[-1].body.decode()
        img = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
        assert img.size == (1024, 704) and img.mode == "RGB"
    finally:
        gw.stop()
        host.close()
        fb.stop()


@pytest.fixture
def fake_behind_gateway(tmp_path: Path):
    """Factory: a scripted backend behind a gateway with the given `images:` settings."""
    with stopped_at_exit() as started:

        def make(images: dict | None = None) -> tuple[GatewayProcess, FakeBackend]:
            fb = FakeBackend().start()
            gw = GatewayProcess({"backends": [{"url": fb.url}], "images": images or {}}, tmp_path).start()
            started.append((gw, fb))
            gw.wait_ready()
            return gw, fb

        yield make


def test_ssrf_urls_are_refused_by_default(fake_behind_gateway) -> None:
    gw, fb = fake_behind_gateway()
    host = _ImageServer(encoded("PNG"), "image/png")
    try:
        for url in (host.url, host.url.replace("127.0.0.1", "localhost"), "file:///etc/passwd",
                    "http://169.254.169.254/latest/meta-data/"):
            r = chat(gw, url)
            assert r.status_code == 400, (url, r.text)
            assert r.json()["error"]["param"].startswith("messages[0].content[0]")
        assert host.hits == 0
        assert fb.chat_requests() == []
    finally:
        host.close()


def test_images_disabled_refuses_image_parts(fake_behind_gateway) -> None:
    gw, fb = fake_behind_gateway({"enabled": False})
    r = chat(gw, "data:image/png;base64," + base64.b64encode(encoded("PNG")).decode())
    assert r.status_code == 400 and r.json()["error"]["param"].startswith("messages[0].content[0]")
    assert fb.chat_requests() == []
