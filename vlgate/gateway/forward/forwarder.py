"""Send one request to a backend, retrying on another while nothing has reached the client.

The wire is gateway/wire.py (keep-alive HTTP/1.1 on asyncio with httptools' parser): measured with
../shared/bench, httpx's default transport collapses at 64 concurrent streams (41 streams/s, 650 ms
TTFB), and aiohttp's general request path was a third of the gateway's CPU per request. httpx stays
for the control plane (health, slots). The retry policy is tenacity's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from vlgate.backends import Backend, BackendState
from vlgate.config import GatewayConfig
from vlgate.errors import APIError
from vlgate.gateway.forward.outlier import OutlierDetector
from vlgate.gateway.forward.wire import (
    BadResponse,
    Client,
    Disconnected,
    HeadTooLarge,
    Response,
)
from vlgate.gateway.observe import tracing
from vlgate.gateway.routing.affinity import Affinity
from vlgate.gateway.routing.balancer import Balancer
from vlgate.images import tier

log = logging.getLogger("vlgate.gateway.forward.forwarder")

# a 503 that says "busy", not "broken": no free slot, a node gateway's queue or drain
_BUSY = ("no slot", "queue_timeout", "queue_full", "draining", "no_backend")
# hop-by-hop (RFC 9110 section 7.6.1) and re-made by our own server: never passed on from a backend
_HOP_HEADERS = frozenset({b"content-length", b"transfer-encoding", b"connection", b"keep-alive", b"server", b"date",
                          b"te", b"trailer", b"upgrade", b"proxy-connection", b"proxy-authenticate"})


class Retryable(Exception):
    """Failed before any byte reached the client: another backend may try."""

    def __init__(self, message: str, backend: Backend) -> None:
        super().__init__(message)
        self.backend = backend


@dataclass(slots=True)
class Upstream:
    """A response whose headers arrived; the body is still to be read from `response`."""

    backend: Backend
    response: Response
    release: Callable[[], None]
    attempts: int
    outliers: OutlierDetector

    def failed(self, state: BackendState, reason: str) -> None:
        """The backend failed after its headers (mid-answer): counts towards its ejection."""
        self.outliers.failure(self.backend, state, reason)

    def succeeded(self) -> None:
        """The whole answer arrived: the backend's failures in a row start over."""
        self.outliers.success(self.backend)

    @property
    def status(self) -> int:
        return self.response.status

    def headers(self) -> list[tuple[bytes, bytes]]:
        """The backend's headers to pass on: without hop-by-hop ones, and without those its `Connection`
        header names (hop-by-hop for this connection only, RFC 9110 section 7.6.1). One pass; the names
        are parsed only when a `Connection` header came (a frozenset of a generator per answer cost ~1 µs)."""
        passed: list[tuple[bytes, bytes]] = []
        connection: list[bytes] = []
        for k, v in self.response.headers:
            if k in _HOP_HEADERS:
                if k == b"connection":
                    connection.append(v)
            else:
                passed.append((k, v))
        if connection:
            named = {name.strip().lower() for value in connection for name in value.split(b",")}
            passed = [(k, v) for k, v in passed if k not in named]
        return passed

    def close(self) -> None:
        """Drop the connection: llama-server frees the slot when its connection closes."""
        self.response.close()
        self.release()


_EMPTY: frozenset[Backend] = frozenset()


def new_client() -> Client:
    return Client(connect_timeout=5.0)


class Forwarder:
    def __init__(self, client: Client, balancer: Balancer, cfg: GatewayConfig,
                 on_retry: Callable[[str], None] | None = None) -> None:
        self.client = client
        self.balancer = balancer
        self.on_retry = on_retry
        self.outliers = OutlierDetector(lambda: self.balancer.backends, cfg.outlier)
        self.retrying = 0  # retry attempts in progress (the retry budget caps them)
        self.budget_refusals = 0
        self.configure(cfg)

    def configure(self, cfg: GatewayConfig) -> None:
        """Timeouts and retry policy for requests that start from now on (also after a config reload)."""
        self.cfg = cfg
        self.outliers.cfg = cfg.outlier

    async def _attempt(self, path: str, body: bytes, affinity: Affinity | None, tried: set[Backend],
                       attempt: int, stream: bool, slot: bool = True, request_id: str = "") -> Upstream:
        # prefer a backend not yet tried; fall back to any when every one has been tried
        untried = _EMPTY
        if tried and any(b.available and b not in tried for b in self.balancer.backends):
            untried = frozenset(tried)
        if slot:
            with tracing.queue():  # a span when traces are on (observe/tracing.py), else a no-op
                backend = await self.balancer.acquire(affinity, untried)
        else:
            backend = self.balancer.least_loaded(untried)
        tried.add(backend)
        released = not slot  # nothing to give back for work that took no slot

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.balancer.release(backend)

        headers = backend.auth_head  # the backend's own --api-key, as header lines
        if request_id:  # endpoint.request_id: ASCII letters, digits, - and _ only
            headers += b"X-Request-ID: " + request_id.encode() + b"\r\n"
        if marks := tier.OUTGOING.get():  # the images this gateway normalized, for a node behind it (images/tier.py)
            headers += tier.header_line(marks)
        # llama-server sends a stream's headers with its first token, but a non-stream answer's only when
        # the whole answer is ready: the first-byte timeout can only judge streams
        wait = self.cfg.retry.first_byte_timeout_s if stream else self.cfg.request_timeout_s
        # a non-stream answer is whole within request_timeout_s, its body too (a read past it raises TimeoutError)
        due = asyncio.get_running_loop().time() + wait
        # the attempt's span (traces on): its traceparent goes along; it ends with the response headers
        with tracing.attempt(backend.name, backend.url, path, attempt) as span:
            try:
                # headers by `due` (TimeoutError); a stream that stalls stream_idle_timeout_s ends with an error
                # event (the read raises TimeoutError)
                resp = await self.client.pool(backend.url).post(path, body, headers + span.traceparent,
                                                                self.cfg.stream_idle_timeout_s if stream else None,
                                                                None if stream else due, headers_due=due)
            except TimeoutError:
                release()
                if not stream:  # a slow answer, not a broken backend: replaying it elsewhere doubles the load
                    raise APIError(503, f"The backend did not answer within request_timeout_s ({wait:g}s).",
                                   code="backend_timeout", headers={"Retry-After": "1"}) from None
                self.outliers.failure(backend, BackendState.SUSPECT,
                                      "no response headers within first_byte_timeout")
                raise Retryable(f"{backend.name}: no response within {wait:g}s", backend) from None
            except (Disconnected, OSError) as exc:
                release()
                self.outliers.failure(backend, BackendState.DOWN, f"connection failed: {type(exc).__name__}")
                raise Retryable(f"{backend.name}: {type(exc).__name__}: {exc}", backend) from exc
            except BadResponse as exc:  # an answer that is not HTTP: nothing reached the client yet
                release()
                self.outliers.failure(backend, BackendState.SUSPECT, f"bad response: {type(exc).__name__}")
                if isinstance(exc, HeadTooLarge):  # as NGINX and Envoy: a 502, not replayed elsewhere
                    raise APIError(502, f"The backend's response head is too large ({exc}).",
                                   code="backend_response_too_large") from None
                raise Retryable(f"{backend.name}: bad response ({type(exc).__name__})", backend) from exc
            except BaseException:
                release()
                raise
            span.status(resp.status)
            if resp.status == 503:
                # "Loading model" (or no slot): this backend is not ready; another may be
                text = (await resp.read()).decode(errors="replace")[:200]
                resp.release()
                release()
                if "loading" in text.lower():  # not a failure: the poller or launcher says when it is ready
                    backend.mark_failed(BackendState.SUSPECT, "Loading model")
                elif any(word in text for word in _BUSY):
                    pass  # full or draining (a node gateway, another replica's load): healthy, try another one
                else:
                    self.outliers.failure(backend, BackendState.SUSPECT, f"503 from backend: {text}")
                raise Retryable(f"{backend.name}: 503 {text}", backend)
        return Upstream(backend, resp, release, attempt, self.outliers)

    def _retry_allowed(self) -> bool:
        """The retry budget: retries in progress stay within a share of active requests (at least a few),
        so a sick fleet is not hammered by replays."""
        active = self.balancer.in_flight() + self.balancer.queued
        o = self.cfg.outlier
        return self.retrying < max(o.min_retry_concurrency, o.retry_budget_ratio * active)

    async def send(self, path: str, body: bytes, affinity: Affinity | None = None, stream: bool = False,
                   slot: bool = True, request_id: str = "") -> Upstream:
        """The first backend response with headers, after bounded jittered retries on other backends.
        `slot`: the work takes a backend slot (waits in the balancer's queue for one); else it goes to the
        least loaded available backend at once (a route declaring `takes_slot=False`). `request_id` goes to the
        backend as `X-Request-ID`."""
        tried: set[Backend] = set()
        try:
            # the first attempt outside tenacity: its machinery costs ~4% of a core at c=16 (py-spy)
            return await self._attempt(path, body, affinity, tried, 1, stream, slot, request_id)
        except Retryable as exc:
            return await self._retry(path, body, affinity, tried, stream, exc, slot, request_id)

    async def _retry(self, path: str, body: bytes, affinity: Affinity | None, tried: set[Backend], stream: bool,
                     first: Retryable, slot: bool, request_id: str = "") -> Upstream:
        retry = self.cfg.retry
        attempt = 0
        try:
            async for att in AsyncRetrying(
                stop=stop_after_attempt(retry.attempts),
                # jitter of one backoff step (tenacity's default is a whole second)
                wait=wait_exponential_jitter(multiplier=retry.backoff_s, max=retry.backoff_max_s,
                                             jitter=retry.backoff_s),
                retry=retry_if_exception_type(Retryable),
                reraise=True,
            ):
                with att:
                    attempt += 1
                    if attempt == 1:
                        raise first  # it already failed: tenacity waits and goes on as if it had run here
                    if not self._retry_allowed():
                        self.budget_refusals += 1
                        raise APIError(503, "No backend answered, and the gateway's retry budget is spent "
                                       f"({self.retrying} retries already in progress).",
                                       code="backend_unavailable", headers={"Retry-After": "1"})
                    if self.on_retry is not None:
                        self.on_retry(path)
                    self.retrying += 1
                    try:
                        return await self._attempt(path, body, affinity, tried, attempt, stream, slot, request_id)
                    finally:
                        self.retrying -= 1
        except Retryable as exc:
            log.warning("giving up after %d attempts: %s", attempt, exc)
            raise APIError(503, f"No backend answered after {attempt} attempt(s): {exc}",
                           code="backend_unavailable", headers={"Retry-After": "1"}) from None
        raise AssertionError("unreachable")  # pragma: no cover
