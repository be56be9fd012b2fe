"""What traces cost per request (gateway/observe/tracing.py): off, and on with the batch exporter.

    python bench/tracing_bench.py [--requests 20000]

Off: exactly the statements the hot path runs per chat request (the endpoint's two `tracing.ENABLED` checks,
`with tracing.queue()`, `with tracing.attempt(...)` with its `traceparent` and `status`), against the same
loop without them. On: one chat request's spans (request with the client's `traceparent`, request_body,
queue, attempt with the injected `traceparent`, finish reading usage and finish reasons from a 600-byte
answer), through the SDK's BatchSpanProcessor into an exporter that drops the batches (the export itself
runs on the processor's thread, not the event loop). Microseconds per request, best of 5 runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parents[1]))

from vlgate.gateway.endpoint.context import RequestContext
from vlgate.gateway.endpoint.route import ApiRoute
from vlgate.gateway.observe import tracing

ROUTE = ApiRoute("/v1/chat/completions", "chat", None, None, "/v1/chat/completions")  # type: ignore[arg-type]
SCOPE = {"path": "/v1/chat/completions", "client": ("127.0.0.1", 5000),
         "headers": [(b"host", b"127.0.0.1:8000"), (b"content-type", b"application/json"),
                     (b"authorization", b"Bearer sk-x"), (b"traceparent",
                                                          b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")]}
BODY = {"model": "youtu-vl", "max_tokens": 64, "temperature": 0.1, "messages": [{"role": "user", "content": "hi"}]}
ANSWER = json.dumps({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "youtu-vl",
                     "choices": [{"index": 0, "message": {"role": "assistant", "content": "word " * 80},
                                  "finish_reason": "stop"}],
                     "usage": {"prompt_tokens": 12, "completion_tokens": 80, "total_tokens": 92}}).encode()


def queue_and_attempt(headers: bytes) -> bytes:
    """The forwarder's two spans around one backend attempt, as forward/forwarder.py opens them."""
    with tracing.queue():
        pass
    with tracing.attempt("backend-0", "http://127.0.0.1:8081", "/v1/chat/completions", 1) as s:
        sent = headers + s.traceparent
        s.status(200)
    return sent


def one_request_off(headers: bytes) -> bytes:
    """The statements tracing added to the hot path, as they run when it is off."""
    span = tracing.request(SCOPE, ROUTE, "id") if tracing.ENABLED else None  # type: ignore[arg-type]
    if tracing.ENABLED:
        tracing.request_body(ROUTE, BODY)
    sent = queue_and_attempt(headers)
    if span is not None:
        raise AssertionError("tracing is on")
    return sent


def baseline(headers: bytes) -> bytes:
    return headers


def one_request_on(headers: bytes) -> bytes:
    ctx = RequestContext(route="chat", started=0.0, id="id", key="team", backend="backend-0", attempts=1,
                         answer=ANSWER)
    span = tracing.request(SCOPE, ROUTE, ctx.id)  # type: ignore[arg-type]
    tracing.request_body(ROUTE, BODY)
    sent = queue_and_attempt(headers)
    tracing.finish(span, ctx, 200)
    return sent


def per_call_us(fn: Any, n: int) -> float:
    headers = b"Authorization: Bearer x\r\n"
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(n):
            fn(headers)
        best = min(best, (time.perf_counter() - t) / n * 1e6)
    return best


def turn_on() -> None:
    """The SDK as `tracing.setup` builds it, with an exporter that drops the batches."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class Drop(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider(resource=Resource.create({"service.name": "vlgate"}))
    provider.add_span_processor(BatchSpanProcessor(Drop()))
    tracing._otel = tracing._Otel(provider.get_tracer("vlgate"))
    tracing.ENABLED = True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=20000)
    n = ap.parse_args().requests
    base = per_call_us(baseline, n)
    off = per_call_us(one_request_off, n)
    turn_on()
    on = per_call_us(one_request_on, n // 4)
    print(f"python {sys.version.split()[0]}, {n} requests")
    print(f"off: {off - base:.3f} µs per request (the added statements; loop and call {base:.3f} µs subtracted)")
    print(f"on:  {on - base:.1f} µs per request (request + queue + attempt spans, attributes, traceparent in/out)")


if __name__ == "__main__":
    main()
