"""`--log-json`: every line a real `vlgate serve` writes is one JSON object (banner, warnings, uvicorn's own
loggers, access lines), and every request has an access line with its fields: the POST API routes
(Gateway.finish) and everything else (observe/accesslog.py), each exactly once."""

from __future__ import annotations

import datetime
import io
import json
import logging
import socket
import time
from pathlib import Path

import httpx
import pytest

from support.fakebackend import FakeBackend
from support.gateway_process import GatewayProcess
from vlgate.cli.common import JsonFormatter, JsonLines

CHAT = {"model": "youtu-vl", "messages": [{"role": "user", "content": "hi"}]}
FIELDS = {"id", "route", "key", "backend", "status", "attempts", "ttfb_ms", "duration_ms", "prompt_tokens",
          "completion_tokens"}


@pytest.fixture
def logged(tmp_path: Path):
    fb = FakeBackend().start()
    gw = GatewayProcess({"backends": [{"url": fb.url}],
                         "gateway": {"api_keys": [{"name": "team-a", "key": "secret-key-a"}]}},
                        tmp_path, args=["--log-json"]).start()
    try:
        gw.wait_ready()
        yield fb, gw
    finally:
        gw.stop()
        fb.stop()


def lines(gw: GatewayProcess) -> list[dict]:
    out = []
    for n, line in enumerate(gw.log_path.read_text().splitlines(), 1):
        assert line.strip(), f"line {n} is blank"
        try:
            obj = json.loads(line)
        except ValueError:
            raise AssertionError(f"line {n} is not JSON: {line!r}") from None
        assert isinstance(obj, dict), f"line {n} is not an object: {line!r}"
        for field in ("ts", "level", "logger", "message"):
            assert field in obj, f"line {n} lacks {field}: {line!r}"
        ts = datetime.datetime.fromisoformat(obj["ts"])
        assert ts.utcoffset() == datetime.timedelta(0), f"line {n}: not UTC: {obj['ts']}"
        out.append(obj)
    return out


def access(records: list[dict]) -> list[dict]:
    return [r for r in records if r["logger"] == "vlgate.access"]


def test_every_line_is_json_and_every_request_has_an_access_line(logged) -> None:
    _fb, gw = logged
    auth = {"Authorization": "Bearer secret-key-a", "X-Request-ID": "trace-chat-1"}
    r = httpx.post(gw.url + "/v1/chat/completions", json=CHAT, headers=auth)
    assert r.status_code == 200
    assert httpx.get(gw.url + "/v1/models", headers={**auth, "X-Request-ID": "trace-models-1"}).status_code == 200
    assert httpx.get(gw.url + "/no/such/route", headers={"X-Request-ID": "trace-404"}).status_code == 404
    bad = httpx.post(gw.url + "/v1/chat/completions", content=b"{not json", headers={
        "Authorization": "Bearer secret-key-a", "content-type": "application/json", "X-Request-ID": "trace-bad"})
    assert bad.status_code == 400
    wrong_key = httpx.get(gw.url + "/v1/models", headers={"Authorization": "Bearer nope",
                                                          "X-Request-ID": "trace-401"})
    assert wrong_key.status_code == 401
    assert httpx.get(gw.url + "/metrics", headers={"X-Request-ID": "trace-metrics"}).status_code in (200, 401)
    with socket.create_connection(("127.0.0.1", gw.port)) as raw:  # uvicorn's own warning: JSON too
        raw.sendall(b"GARBAGE \x00 nonsense\r\n\r\n")
        assert raw.recv(1000).startswith(b"HTTP/1.1 400")
    time.sleep(0.3)
    gw.stop()  # the shutdown lines (uvicorn's, the drain's) must be JSON too

    records = lines(gw)
    assert any("serving youtu-vl" in r["message"] for r in records), "no startup banner"
    assert any(r["logger"] == "uvicorn.error" and r["level"] == "WARNING" for r in records), "uvicorn's line"
    by_id = {}
    for r in access(records):
        assert set(r) >= FIELDS, f"access line lacks {FIELDS - set(r)}: {r}"
        assert r["id"] not in by_id, f"request {r['id']} logged twice"
        by_id[r["id"]] = r

    chat = by_id["trace-chat-1"]
    assert chat["route"] == "chat" and chat["status"] == 200 and chat["key"] == "team-a"
    assert chat["backend"] and chat["attempts"] == 1
    assert chat["ttfb_ms"] is not None and chat["duration_ms"] >= chat["ttfb_ms"]
    assert chat["prompt_tokens"] is not None and chat["completion_tokens"] is not None

    models = by_id["trace-models-1"]
    assert models["route"] == "/v1/models" and models["status"] == 200 and models["key"] == "team-a"
    assert models["backend"] is None and models["duration_ms"] >= 0

    missing = by_id["trace-404"]
    assert missing["status"] == 404 and missing["route"] == "unknown" and missing["key"] is None

    assert by_id["trace-bad"]["status"] == 400 and by_id["trace-bad"]["route"] == "chat"
    assert by_id["trace-401"]["status"] == 401 and by_id["trace-401"]["key"] is None
    assert by_id["trace-metrics"]["route"] == "/metrics"

    # the health polls of GatewayProcess.start/wait_ready have lines too, with ids of their own
    assert any(r["route"] == "/health" for r in by_id.values())
    assert all(r["route"] == "/ready" or r["id"].startswith("trace-") or r["route"] == "/health"
               for r in by_id.values())
    # never the key itself
    assert "secret-key-a" not in gw.log_path.read_text()


def test_formatter_and_stray_lines() -> None:
    """Fields given with `extra=` go top level, a traceback is one string; a line printed to a wrapped
    stderr becomes an object, a JSON object passes through."""
    record = logging.LogRecord("vlgate.x", logging.ERROR, __file__, 1, "failed %s", ("here",), None)
    record.route = "chat"
    try:
        raise ValueError("boom")
    except ValueError:
        import sys
        record.exc_info = sys.exc_info()
    obj = json.loads(JsonFormatter().format(record))
    assert obj["message"] == "failed here" and obj["route"] == "chat" and obj["level"] == "ERROR"
    assert "ValueError: boom" in obj["exc"]

    out = io.StringIO()
    wrapped = JsonLines(out)
    wrapped.write("[vlgate] backend b0 on http://x\npartial")
    wrapped.write(' line\n{"already": "json"}\n')
    wrapped.flush()
    got = [json.loads(line) for line in out.getvalue().splitlines()]
    assert got[0]["message"] == "[vlgate] backend b0 on http://x" and got[0]["logger"] == "stderr"
    assert got[1]["message"] == "partial line"
    assert got[2] == {"already": "json"}
