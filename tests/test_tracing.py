"""Traces (gateway/observe/tracing.py): a real `vlgate serve` exporting OTLP/HTTP to a real receiver on a
loopback port, the client's `traceparent` continued, the span tree and its GenAI attributes, `traceparent` and
`X-Request-ID` sent to the backend; and with no OTEL_* variables, OpenTelemetry is not even imported."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from support.fakebackend import FakeBackend
from support.gateway_process import GatewayProcess
from support.pipeline_answers import OpenSetScript, picture, png_data_url
from vlgate.config import TracingConfig
from vlgate.gateway.observe import tracing

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"
SERVER, CLIENT = 2, 3  # opentelemetry.proto.trace.v1.Span.SpanKind


@dataclass
class Span:
    name: str
    kind: int
    trace_id: str
    span_id: str
    parent: str
    attributes: dict[str, Any]
    status_code: int
    resource: dict[str, Any]


def _value(v: Any) -> Any:
    which = v.WhichOneof("value")
    if which == "array_value":
        return [_value(x) for x in v.array_value.values]
    return getattr(v, which) if which else None


class Receiver:
    """An OTLP/HTTP trace receiver: POST /v1/traces, protobuf bodies decoded into `spans`."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.posts = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                if self.path != "/v1/traces":
                    self.send_response(404)
                    self.end_headers()
                    return
                request = ExportTraceServiceRequest.FromString(body)
                found = []
                for rs in request.resource_spans:
                    resource = {a.key: _value(a.value) for a in rs.resource.attributes}
                    for ss in rs.scope_spans:
                        for s in ss.spans:
                            found.append(Span(s.name, s.kind, s.trace_id.hex(), s.span_id.hex(),
                                              s.parent_span_id.hex(), {a.key: _value(a.value) for a in s.attributes},
                                              s.status.code, resource))
                receiver.spans.extend(found)
                receiver.posts += 1
                data = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def wait(self, trace_id: str, names: set[str], timeout: float = 15.0) -> list[Span]:
        """The trace's spans once every name in `names` arrived."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            spans = [s for s in self.spans if s.trace_id == trace_id]
            if names <= {s.name for s in spans}:
                return spans
            time.sleep(0.05)
        raise AssertionError(f"spans {names} of {trace_id} not received: {[(s.name, s.trace_id) for s in self.spans]}")


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


KEY = "sk-trace-test-key"


def traced_gateway(tmp_path: Path, receiver: Receiver, fb: FakeBackend) -> GatewayProcess:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "100",
           "OTEL_SERVICE_NAME": "vlgate", "OTEL_TRACES_SAMPLER": "parentbased_always_on"}
    gw = GatewayProcess({"backends": [{"url": fb.url}], "gateway": {"api_keys": [{"name": "team", "key": KEY}]}},
                        tmp_path, env=env)
    gw.start().wait_ready()
    return gw


def test_a_chat_request_is_one_trace_continuing_the_clients(tmp_path: Path, receiver: Receiver) -> None:
    fb = FakeBackend().start()
    gw = traced_gateway(tmp_path, receiver, fb)
    try:
        body = {"model": "youtu-vl", "max_tokens": 16, "temperature": 0.2,
                "messages": [{"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": png_data_url(picture((64, 48)))}},
                    {"type": "text", "text": "what is this?"}]}]}
        headers = {"Authorization": f"Bearer {KEY}", "traceparent": f"00-{TRACE_ID}-{CLIENT_SPAN}-01",
                   "X-Request-ID": "trace-test-1"}
        r = httpx.post(gw.url + "/v1/chat/completions", json=body, headers=headers, timeout=30)
        assert r.status_code == 200, r.text
        spans = receiver.wait(TRACE_ID, {"chat youtu-vl", "queue", "images", "POST /v1/chat/completions"})
    finally:
        gw.stop()
        fb.stop()

    by_name = {s.name: s for s in spans}
    server = by_name["chat youtu-vl"]
    assert server.kind == SERVER and server.parent == CLIENT_SPAN  # the client's trace, its span the parent
    assert server.resource["service.name"] == "vlgate"
    a = server.attributes
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.request.model"] == "youtu-vl" and a["gen_ai.response.model"]
    assert a["gen_ai.request.max_tokens"] == 16 and a["gen_ai.request.temperature"] == 0.2
    assert a["gen_ai.usage.input_tokens"] == 3 and a["gen_ai.usage.output_tokens"] == 2  # the fake's usage
    assert a["gen_ai.response.finish_reasons"] == ["stop"]
    assert a["http.response.status_code"] == 200 and a["http.route"] == "/v1/chat/completions"
    assert a["vlgate.route"] == "chat" and a["vlgate.key"] == "team" and a["vlgate.attempts"] == 1
    assert a["vlgate.request_id"] == "trace-test-1" and a["vlgate.images"] == 1
    assert not any(KEY in str(v) for s in spans for v in s.attributes.values())  # the key's name, never the key

    for name in ("queue", "images", "POST /v1/chat/completions"):
        assert by_name[name].parent == server.span_id, name
    attempt = by_name["POST /v1/chat/completions"]
    assert attempt.kind == CLIENT
    assert attempt.attributes["server.address"] == "127.0.0.1" and attempt.attributes["server.port"] == fb.port
    assert attempt.attributes["http.response.status_code"] == 200 and attempt.attributes["vlgate.attempt"] == 1

    (seen,) = fb.chat_requests()
    assert seen.headers["traceparent"] == f"00-{TRACE_ID}-{attempt.span_id}-01"  # the attempt is the parent
    assert seen.headers["x-request-id"] == "trace-test-1"


def test_a_pipeline_preset_has_one_span_per_step(tmp_path: Path, receiver: Receiver) -> None:
    fb = FakeBackend(script=OpenSetScript(), slots=4).start()
    gw = traced_gateway(tmp_path, receiver, fb)
    trace_id = "1" * 32
    try:
        body = {"model": "youtu-vl", "preset": "segment", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": png_data_url(picture())}}]}]}
        headers = {"Authorization": f"Bearer {KEY}", "traceparent": f"00-{trace_id}-{CLIENT_SPAN}-01"}
        r = httpx.post(gw.url + "/v1/chat/completions", json=body, headers=headers, timeout=60)
        assert r.status_code == 200, r.text
        steps = {"step prompt", "step detect", "step core_target"}
        spans = receiver.wait(trace_id, {"chat youtu-vl", *steps})
        time.sleep(0.5)  # a batch may still carry the last children
        spans = [s for s in receiver.spans if s.trace_id == trace_id]
    finally:
        gw.stop()
        fb.stop()

    (server,) = [s for s in spans if s.kind == SERVER]
    assert server.attributes["vlgate.preset"] == "segment"
    step_spans = {s.name: s for s in spans if s.name.startswith("step ")}
    assert set(step_spans) == steps  # one span per step
    assert all(s.parent == server.span_id for s in step_spans.values())
    attempts = [s for s in spans if s.kind == CLIENT]
    per_step = {name: sum(a.parent == s.span_id for a in attempts) for name, s in step_spans.items()}
    assert per_step == {"step prompt": 1, "step detect": 1, "step core_target": 3}  # a call per detected box
    assert server.attributes["vlgate.attempts"] == 5
    assert server.attributes["gen_ai.usage.input_tokens"] == 15  # 5 calls of the fake's 3 prompt tokens
    core = step_spans["step core_target"]
    assert sum(s.name == "images" and s.parent == core.span_id for s in spans) == 3  # each crop normalized


def test_without_otel_variables_opentelemetry_is_not_imported(tmp_path: Path) -> None:
    """Off by default and free: the app is built and a request served without importing OpenTelemetry."""
    code = textwrap.dedent("""
        import sys
        from starlette.testclient import TestClient
        from vlgate.config import parse_config
        from vlgate.gateway.app import create_app
        from vlgate.gateway.observe import tracing
        app = create_app(parse_config({"backends": [{"url": "http://127.0.0.1:9"}]}, "test"), poll_health=False)
        with TestClient(app) as client:
            client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
        print(tracing.ENABLED, sorted(m for m in sys.modules if m.startswith("opentelemetry")))
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[-2] == "False []", out.stdout


@pytest.mark.parametrize("cfg,env,on", [
    ({}, {}, None),
    ({}, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, "OTEL_EXPORTER_OTLP_ENDPOINT"),
    ({}, {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
    ({}, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"}, None),
    ({}, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"}, None),
    ({"enabled": False}, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, None),
    ({"enabled": True}, {}, "gateway.tracing"),
    ({"endpoint": "http://c:4318"}, {}, "gateway.tracing"),
])
def test_what_turns_tracing_on(cfg: dict[str, Any], env: dict[str, str], on: str | None) -> None:
    assert tracing.asked_by(TracingConfig(**cfg), env) == on


def test_asked_for_without_the_extra_one_warning_and_no_traces(monkeypatch: pytest.MonkeyPatch,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    for name in ("opentelemetry.exporter.otlp.proto.http.trace_exporter", "opentelemetry.sdk.resources",
                 "opentelemetry.sdk.trace", "opentelemetry.sdk.trace.export"):
        monkeypatch.setitem(sys.modules, name, None)  # as if `vlgate[otel]` were not installed
    monkeypatch.setattr(tracing, "ENABLED", False)
    with caplog.at_level(logging.WARNING, "vlgate.gateway.tracing"):
        assert tracing.setup(TracingConfig(), {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}) is False
    (record,) = caplog.records
    assert "pip install 'vlgate[otel]'" in record.getMessage() and "OTEL_EXPORTER_OTLP_ENDPOINT" in record.getMessage()
    assert tracing.ENABLED is False and tracing.queue() is tracing.NULL
