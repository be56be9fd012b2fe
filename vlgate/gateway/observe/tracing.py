"""Traces: OpenTelemetry spans for every API request, off by default and free when off.

On with the standard variables alone: OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT
(OTLP over HTTP/protobuf), or `gateway.tracing` in the config; the SDK reads the rest as it always does
(OTEL_SERVICE_NAME, default "vlgate"; OTEL_TRACES_SAMPLER[_ARG]; OTEL_BSP_*; OTEL_EXPORTER_OTLP_HEADERS;
OTEL_PROPAGATORS; OTEL_RESOURCE_ATTRIBUTES). OTEL_SDK_DISABLED=true, OTEL_TRACES_EXPORTER=none or
`gateway.tracing.enabled: false` keep it off. Needs the `otel` extra (`pip install 'vlgate[otel]'`); asked
for without it, one warning line and the gateway serves without traces. Nothing of OpenTelemetry is
imported until tracing is on.

One trace per API request, continuing the client's `traceparent` (W3C trace context):

    chat youtu-vl                    SERVER    the request, door to last byte (endpoint/endpoint.py)
    ├── images                       INTERNAL  image normalization (ImageNormalizer.observe)
    ├── queue                        INTERNAL  waiting in the balancer for a backend slot (Balancer.acquire)
    └── POST /v1/chat/completions    CLIENT    one backend attempt, until its response headers (a retry: one more)
    a preset the gateway runs itself: `step prompt`, `step detect`, `step core_target`, ... under the request,
    each holding its own images / queue / attempt spans

Each attempt sends `traceparent` (its own span as the parent: a node gateway continues the trace;
llama-server ignores it) and `X-Request-ID` (sent with tracing off too: forward/forwarder.py).

Attributes: the request span has the GenAI conventions' gen_ai.operation.name, gen_ai.provider.name,
gen_ai.request.model / max_tokens / temperature / top_p, gen_ai.response.model / id / finish_reasons,
gen_ai.usage.input_tokens / output_tokens (what the backends reported: the tokens charged to the key), the
HTTP ones (http.request.method, http.route, url.path, http.response.status_code, error.type) and vlgate's:
vlgate.route, vlgate.request_id, vlgate.key (the key's name, never the key), vlgate.preset, vlgate.stream,
vlgate.backend, vlgate.attempts, vlgate.images, vlgate.ttfb_ms. An attempt: server.address, server.port,
url.full, http.request.method, http.response.status_code, vlgate.backend, vlgate.attempt.

Cost, measured with bench/tracing_bench.py (Python 3.11, opentelemetry-sdk 1.45, a shared 2-core VM under
load; best of 5): off, the statements the hot path runs per chat request (the endpoint's two `tracing.ENABLED`
checks: 0.002 µs each; `with tracing.queue()`: 0.15 µs; `with tracing.attempt(...)` with its `traceparent` and
`status`: 0.17 µs) take 0.32-0.5 µs together, against ~235 µs of gateway CPU per request
(bench/results/20261124-gateway-overhead.md). On, a chat request's three spans with their attributes,
`traceparent` read and sent, through the BatchSpanProcessor (the export runs on its own thread): 110-160 µs of
event-loop CPU per request on that VM (one bare SDK span costs 16 µs there; the request span with its start,
attributes and finish 63 µs, the attempt 27, the queue 17). Where that matters, sample:
OTEL_TRACES_SAMPLER=parentbased_traceidratio with OTEL_TRACES_SAMPLER_ARG=0.1 (unsampled spans cost little).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from vlgate import __version__
from vlgate.gateway.observe.usage import StreamEnds, Tokens, charged_tokens

if TYPE_CHECKING:
    from starlette.types import Scope

    from vlgate.config import TracingConfig


class ApiRoute(Protocol):  # what is read of endpoint.route.ApiRoute (imported by the forwarder: no import cycle)
    @property
    def path(self) -> str: ...
    @property
    def label(self) -> str: ...


class RequestContext(Protocol):  # what is read of endpoint.context.RequestContext
    key: str | None
    backend: str | None
    attempts: int
    images: int
    ttfb: float | None
    answer: bytes | None
    tail: StreamEnds | None
    spent: Tokens | None

log = logging.getLogger("vlgate.gateway.tracing")

ENABLED = False  # read at the call sites: off, nothing below but NULL is ever reached
_otel: _Otel | None = None

# route label -> gen_ai.operation.name (routes not here get HTTP attributes only)
_OPERATIONS = {"chat": "chat", "messages": "chat", "responses": "chat", "completions": "text_completion",
               "embeddings": "embeddings"}
_MAX_TOKENS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
_MODEL = re.compile(rb'"model"\s*:\s*"([^"\\]{1,256})"')
_ID = re.compile(rb'"id"\s*:\s*"([^"\\]{1,256})"')
_REASON_VALUE = re.compile(rb'\s*:\s*"([A-Za-z_]{1,64})"')
_REASON_KEYS = (b'"finish_reason"', b'"stop_reason"')  # OpenAI, Anthropic
_HEAD = 4096


class _Otel:
    """The OpenTelemetry pieces, imported once tracing is on."""

    def __init__(self, tracer: Any) -> None:
        from opentelemetry import context, propagate, trace
        from opentelemetry.trace import SpanKind, Status, StatusCode

        self.tracer, self.context, self.propagate, self.trace = tracer, context, propagate, trace
        self.SERVER, self.CLIENT, self.INTERNAL = SpanKind.SERVER, SpanKind.CLIENT, SpanKind.INTERNAL
        self.Status, self.ERROR = Status, StatusCode.ERROR
        self.fields = frozenset(f.encode() for f in propagate.get_global_textmap().fields)


# -- off: the null span ------------------------------------------------------------------------------


class Span:
    """A child span as a context manager; this base is the null one, whose methods do nothing."""

    __slots__ = ()
    traceparent = b""  # header lines for the backend (an attempt's own trace context)

    def __enter__(self) -> Span:
        return self

    def __exit__(self, typ: object, exc: BaseException | None, tb: object) -> None:
        return None

    def status(self, code: int) -> None:
        """An attempt's HTTP status (4xx and 5xx mark it failed)."""


NULL = Span()


def queue() -> Span:
    """Waiting in the balancer's queue for a backend slot."""
    return _Child("queue") if ENABLED else NULL


def attempt(backend: str, url: str, path: str, number: int) -> Span:
    """One backend attempt (SpanKind.CLIENT); its `traceparent` goes to the backend."""
    return _Attempt(backend, url, path, number) if ENABLED else NULL


def step(name: str) -> Span:
    """One step of a pipeline the gateway runs itself; the step's backend calls are its children."""
    return _Child(f"step {name}", {"vlgate.step": name}, attach=True) if ENABLED else NULL


# -- on ----------------------------------------------------------------------------------------------


class _Child(Span):
    __slots__ = ("span", "token")

    def __init__(self, name: str, attributes: dict[str, Any] | None = None, kind: Any = None,
                 attach: bool = False) -> None:
        o = _otel
        assert o is not None
        self.span = o.tracer.start_span(name, kind=kind or o.INTERNAL, attributes=attributes)
        self.token = o.context.attach(o.trace.set_span_in_context(self.span)) if attach else None

    def __exit__(self, typ: object, exc: BaseException | None, tb: object) -> None:
        o = _otel
        assert o is not None
        if self.token is not None:
            o.context.detach(self.token)
        if exc is not None:
            name = type(exc).__name__
            self.span.set_attribute("error.type", name)
            self.span.set_status(o.Status(o.ERROR, f"{name}: {exc}"[:300]))
        self.span.end()


class _Attempt(_Child):
    __slots__ = ("traceparent",)

    def __init__(self, backend: str, url: str, path: str, number: int) -> None:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        super().__init__(f"POST {path}", {
            "http.request.method": "POST", "server.address": parts.hostname or "", "server.port": port,
            "url.full": url.rstrip("/") + path, "vlgate.backend": backend, "vlgate.attempt": number,
        }, kind=_otel.CLIENT if _otel else None)
        assert _otel is not None
        carrier: dict[str, str] = {}
        _otel.propagate.inject(carrier, context=_otel.trace.set_span_in_context(self.span))
        self.traceparent = "".join(f"{k}: {v}\r\n" for k, v in carrier.items()).encode("latin-1")

    def status(self, code: int) -> None:
        self.span.set_attribute("http.response.status_code", code)
        if code >= 400 and _otel is not None:
            self.span.set_attribute("error.type", str(code))
            self.span.set_status(_otel.Status(_otel.ERROR))


class Request:
    """The SERVER span of one API request, current (attached) from `request` to `finish`."""

    __slots__ = ("span", "token")

    def __init__(self, span: Any, token: object) -> None:
        self.span, self.token = span, token


def request(scope: Scope, route: ApiRoute, request_id: str) -> Request:
    """Start the request's span (the client's `traceparent` its parent); call only when ENABLED."""
    o = _otel
    assert o is not None
    carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"] if k in o.fields}
    parent = o.propagate.extract(carrier)
    attributes: dict[str, Any] = {"http.request.method": "POST", "http.route": route.path, "url.path": scope["path"],
                                  "vlgate.route": route.label, "vlgate.request_id": request_id}
    client = scope.get("client")
    if client:
        attributes["client.address"] = client[0]
    span = o.tracer.start_span(f"POST {route.path}", context=parent, kind=o.SERVER, attributes=attributes)
    return Request(span, o.context.attach(o.trace.set_span_in_context(span, parent)))


def request_body(route: ApiRoute, body: dict[str, Any]) -> None:
    """What the client asked for (before the API's rules rewrite it): model, sampling, preset."""
    assert _otel is not None
    span = _otel.trace.get_current_span()
    if not span.is_recording():  # not sampled
        return
    model = body.get("model")
    model = model if isinstance(model, str) else None
    a: dict[str, Any] = {"vlgate.stream": body.get("stream") is True}
    operation = _OPERATIONS.get(route.label)
    if operation is not None:
        span.update_name(f"{operation} {model}" if model else operation)
        a["gen_ai.operation.name"], a["gen_ai.provider.name"] = operation, "llama.cpp"
    if model:
        a["gen_ai.request.model"] = model
    for name in _MAX_TOKENS:
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            a["gen_ai.request.max_tokens"] = value
            break
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            a[f"gen_ai.request.{name}"] = value
    preset = body.get("preset")
    if not isinstance(preset, str) and model and ":" in model:
        preset = model.rsplit(":", 1)[1]  # the virtual model <model>:<preset>
    if isinstance(preset, str) and preset:
        a["vlgate.preset"] = preset
    span.set_attributes(a)  # one call: the SDK takes its lock once


def finish(req: Request, ctx: RequestContext, status: int) -> None:
    """End the request's span with what the answer said (after Gateway.finish did the accounting)."""
    o = _otel
    assert o is not None
    span = req.span
    try:
        if not span.is_recording():  # not sampled
            return
        a: dict[str, Any] = {"http.response.status_code": status, "vlgate.attempts": ctx.attempts,
                             "vlgate.images": ctx.images}
        if ctx.key is not None:
            a["vlgate.key"] = ctx.key  # the key's name
        if ctx.backend is not None:
            a["vlgate.backend"] = ctx.backend
        if ctx.ttfb is not None:
            a["vlgate.ttfb_ms"] = round(ctx.ttfb * 1000, 2)
        tokens = charged_tokens(ctx.answer, ctx.tail, ctx.spent, status)
        if tokens is not None:
            a["gen_ai.usage.input_tokens"], a["gen_ai.usage.output_tokens"] = tokens.prompt, tokens.completion
        if status < 400:
            _answer_attributes(a, ctx)
        if status >= 500:
            a["error.type"] = str(status)
            span.set_status(o.Status(o.ERROR))
        span.set_attributes(a)
    finally:
        o.context.detach(req.token)
        span.end()


def _answer_attributes(a: dict[str, Any], ctx: RequestContext) -> None:
    """gen_ai.response.*: from the answer's first bytes (model, id) and its finish/stop reasons."""
    if ctx.answer is not None:
        head, whole = ctx.answer[:_HEAD], ctx.answer
    elif ctx.tail is not None:
        head, whole = ctx.tail.head, b"".join(ctx.tail.tail)
    else:
        return
    if (m := _MODEL.search(head)) is not None:
        a["gen_ai.response.model"] = m.group(1).decode("utf-8", "replace")
    if (m := _ID.search(head)) is not None:
        a["gen_ai.response.id"] = m.group(1).decode("utf-8", "replace")
    reasons: list[str] = []
    for key in _REASON_KEYS:  # bytes.find, not a regex over what may be MBs; a key inside a string is escaped
        pos = whole.find(key)
        while pos >= 0:
            if (m := _REASON_VALUE.match(whole, pos + len(key))) is not None:
                reasons.append(m.group(1).decode())
            pos = whole.find(key, pos + len(key))
    if reasons:
        a["gen_ai.response.finish_reasons"] = list(dict.fromkeys(reasons))


# -- setup -------------------------------------------------------------------------------------------


def asked_by(cfg: TracingConfig, environ: Mapping[str, str]) -> str | None:
    """What turns tracing on (for the log line), or None when it stays off."""
    if cfg.enabled is False or environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    if environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return None
    if cfg.enabled or cfg.endpoint:
        return "gateway.tracing"
    for name in ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        if environ.get(name, "").strip():
            return name
    return None


def setup(cfg: TracingConfig, environ: Mapping[str, str] = os.environ) -> bool:
    """Turn tracing on when asked for (once per process: a config reload does not change it)."""
    global ENABLED, _otel
    if ENABLED:
        return True
    why = asked_by(cfg, environ)
    if why is None:
        return False
    try:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        log.warning("tracing is asked for (%s) but OpenTelemetry is not installed (no %s): "
                    "pip install 'vlgate[otel]'; serving without traces", why, exc.name)
        return False
    if environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "")) == "grpc":
        log.warning("tracing: OTLP over gRPC is not supported; exporting over HTTP/protobuf")
    service = cfg.service_name or environ.get("OTEL_SERVICE_NAME") or "vlgate"
    endpoint = cfg.endpoint.rstrip("/") + "/v1/traces" if cfg.endpoint else None
    exporter = OTLPSpanExporter(endpoint=endpoint)  # None: OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT, as the SDK reads
    # no sampler given: the SDK's from OTEL_TRACES_SAMPLER (default parentbased_always_on); flushed at exit
    provider = TracerProvider(resource=Resource.create({"service.name": service, "service.version": __version__}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _otel = _Otel(provider.get_tracer("vlgate", __version__))
    _trace_images()
    ENABLED = True
    log.info("tracing on (%s): spans to %s as service %s", why, getattr(exporter, "_endpoint", endpoint), service)
    return True


def _trace_images() -> None:
    """An `images` span around the work on a body's images: the normalizer's own `observe` hook, set once
    tracing is on (the images package knows nothing of traces and costs nothing when they are off)."""
    from vlgate.images.normalizer import ImageNormalizer

    ImageNormalizer.observe = staticmethod(lambda count: _Child("images", {"vlgate.images": count}))
