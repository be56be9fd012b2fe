"""The gateway's long-lived parts in one place: backends, balancer, forwarder, keys, metrics, poller.

Built once per app (`create_app`); every route reaches them through the `Gateway` object.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from starlette.requests import Request
from starlette.types import ASGIApp

from vlgate.backends import Backend, BackendState
from vlgate.batches.metrics import BatchCollector
from vlgate.batches.worker import BatchWorker
from vlgate.config import Config
from vlgate.gateway.endpoint.context import RequestContext
from vlgate.gateway.fleet.capacity import ModelServerGauges, NodeLoad, node_load
from vlgate.gateway.fleet.discovery import DnsDiscovery
from vlgate.gateway.fleet.membership import STATIC, Membership, static_backends
from vlgate.gateway.fleet.model_names import BackendModels
from vlgate.gateway.fleet.poller import HealthPoller
from vlgate.gateway.fleet.reload import Reloader
from vlgate.gateway.fleet.watchdog import SlotWatchdog
from vlgate.gateway.forward.forwarder import Forwarder, new_client
from vlgate.gateway.forward.wire import Client
from vlgate.gateway.frontdoor.auth import KeyChecker, header_credentials
from vlgate.gateway.frontdoor.bodies import BodyBudget
from vlgate.gateway.frontdoor.keylimits import KeyLimiter
from vlgate.gateway.observe.looplag import LoopLag
from vlgate.gateway.observe.metrics import FaultCollector, Metrics
from vlgate.gateway.observe.observer import Observer
from vlgate.gateway.observe.usage import charged_tokens
from vlgate.gateway.routing.balancer import Balancer
from vlgate.images import ImageNormalizer
from vlgate.presets import PresetRegistry, TokenCheck, check_special_tokens
from vlgate.store import open_store
from vlgate.store.base import Store, StoreError
from vlgate.store.metrics import StoreStats
from vlgate.store.sweeper import Sweeper

access_log = logging.getLogger("vlgate.access")


def backends_from_config(config: Config) -> list[Backend]:
    """The backends listed by url (those given by DNS name join when discovery resolves them)."""
    return static_backends(config.backends, config.gateway.default_slots)


class Gateway:
    def __init__(self, config: Config, backends: list[Backend], *, manage_state: bool = True,
                 reload_config: Callable[[], Config] | None = None) -> None:
        g = config.gateway
        self.config = config
        self.backends = backends
        self.keys = KeyChecker(config.resolved_api_keys())
        # pipeline steps and overlays holding an image's full-size pixels at once (presetrun/pipelines.py)
        self.full_size = asyncio.Semaphore(g.pipeline_full_size)
        self.bodies = BodyBudget(g.limits.max_buffered_bytes)  # request bodies held at once (frontdoor/bodies.py)
        self.key_limits = KeyLimiter(g.key_limits, queue_size=g.queue.size, queue_timeout_s=g.queue.timeout_s)
        self.balancer = Balancer(backends, queue_size=g.queue.size, queue_timeout_s=g.queue.timeout_s,
                                 affinity_load=g.affinity.load, affinity_wait_s=g.affinity.wait_s)
        self.metrics = Metrics(self.balancer)
        self.loop_lag = LoopLag(self.metrics.registry)  # stalls of the event loop (`recent_max_s`, /metrics)
        self.watchdog = (SlotWatchdog(lambda: self.backends, g.watchdog, self.metrics.registry)
                         if g.watchdog.enabled else None)
        self.poller = HealthPoller(backends, self.balancer, interval_s=g.health.interval_s,
                                   timeout_s=g.health.timeout_s, manage_all=manage_state,
                                   busy_interval_s=g.health.busy_interval_s)
        self.observer = Observer(self.metrics.registry, backends, self.poller.client)  # status page, usage, fleet
        self.poller.after_check.append(self.observer.after_check)
        self.backend_client: Client | None = None  # set in startup, with the forwarder
        self.forwarder: Forwarder = None  # type: ignore[assignment]  # set in startup (needs a loop)
        # images.enabled=false makes the normalizer refuse images (400); they never pass raw
        self.images = ImageNormalizer(config.images)
        self._retired_images: list[ImageNormalizer] = []  # replaced by reloads, closed at shutdown
        self.presets = PresetRegistry.load(config.presets)
        self.created = time.time()
        self.token_checks: dict[str, TokenCheck | None] = {}  # None: check running
        self.backend_models = BackendModels()  # drop-in model names (routes/models.py)
        self._checking: set[asyncio.Task[None]] = set()
        for backend in backends:
            backend.listeners.append(self._on_backend_state)
        # backends that join and leave while running; the launcher owns the list under `vlgate up`
        self.members = Membership(backends, self.balancer, self.poller, self._on_backend_state)
        self.discovery = DnsDiscovery(config, self.members) if manage_state else None
        self.reloader = Reloader(self, reload_config)
        self.admitted = 0  # requests of draining routes in progress: a drain waits for them (endpoint/endpoint.py)
        self.metrics.registry.register(ModelServerGauges(self.node_load))  # Inference Extension gauges
        # stored responses, conversations, files, batches (vlgate/store/); opened in startup, None when disabled
        self.store: Store | None = None
        self.sweeper: Sweeper | None = None  # retention (store/sweeper.py)
        self.store_stats: StoreStats | None = None  # its size in /metrics and /status (store/metrics.py)
        self.batch_worker: BatchWorker | None = None  # batch lines, in slots interactive traffic leaves free
        self.api_endpoints: dict[str, ASGIApp] = {}  # path -> endpoint, for in-process calls (endpoint/internal.py)

    def node_load(self) -> NodeLoad:
        """This gateway's capacity as the tier above sees it (`/slots`, model-server gauges)."""
        return node_load(self.backends, self.balancer.queued, self.balancer.draining)

    def _on_backend_state(self, backend: Backend) -> None:
        """First time a backend is ready: check that preset structure tokens survive its output."""
        self.backend_models.on_state(backend, self.poller.client)
        if backend.state is BackendState.READY and backend.name not in self.token_checks:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # state set from outside the loop: check at the next transition
                return
            self.token_checks[backend.name] = None
            task = loop.create_task(self._check_tokens(backend))
            self._checking.add(task)
            task.add_done_callback(self._checking.discard)

    async def _check_tokens(self, backend: Backend) -> None:
        try:
            result = await check_special_tokens(self.poller.client, backend.url, backend.auth_headers())
        except Exception as exc:  # a backend without /tokenize: unknown, not fatal
            access_log.warning("token check of %s failed: %s", backend.name, exc)
            self.token_checks.pop(backend.name, None)
            return
        self.token_checks[backend.name] = result
        if result.ok is False:
            access_log.warning("backend %s: structured presets unavailable: %s", backend.name, result.reason)

    def structure_tokens_problem(self) -> str | None:
        """A reason when every checked backend strips `<box>`-style tokens (structured presets can't work)."""
        checks = [c for c in self.token_checks.values() if c is not None]
        if checks and all(c.ok is False for c in checks):
            return checks[0].reason
        return None

    async def startup(self) -> None:
        await self._open_store()  # first: a database that cannot be reached stops the start, nothing to undo
        self.loop_lag.start()
        self.backend_client = new_client()
        self.forwarder = Forwarder(self.backend_client, self.balancer, self.config.gateway,
                                   on_retry=lambda route: self.metrics.retries.labels(route).inc())
        self.metrics.registry.register(FaultCollector(lambda: self.forwarder.outliers.ejections,
                                                      lambda: self.forwarder.budget_refusals,
                                                      lambda: self.key_limits.refused))
        if self.discovery is not None:
            await self.discovery.refresh()
        await self.poller.check_all()
        self.poller.start()
        if self.watchdog is not None:
            self.watchdog.start(self.poller.client)
        if self.discovery is not None:
            self.discovery.start()
        self.reloader.install_signal()
        if self.store is not None:  # batch jobs: this replica works the fleet's lines (batches/worker.py)
            self.batch_worker = BatchWorker(self.store, self.balancer, self.api_endpoints, self.config.storage,
                                            lambda owner: not self.keys.enabled or owner in self.keys.names)
            self.metrics.registry.register(BatchCollector(self.batch_worker))
            self.batch_worker.start()

    async def _open_store(self) -> None:
        storage = self.config.storage
        if not storage.enabled:
            return
        try:
            self.store = await open_store(storage)
        except StoreError as exc:
            access_log.error("cannot start: %s", exc)
            raise
        self.sweeper = Sweeper(self.store, storage.retention.sweep_interval_s)
        self.sweeper.start()
        self.store_stats = StoreStats(self.store, self.sweeper)
        await self.store_stats.start()
        self.metrics.registry.register(self.store_stats)

    async def _close_store(self) -> None:
        if self.store_stats is not None:
            self.metrics.registry.unregister(self.store_stats)
            await self.store_stats.aclose()
        if self.sweeper is not None:
            await self.sweeper.aclose()
        if self.store is not None:
            await self.store.close()

    async def shutdown(self) -> None:
        if self.batch_worker is not None:  # first: its lines in flight stop and go back to the store
            await self.batch_worker.aclose()
        await self.loop_lag.aclose()
        if self.discovery is not None:
            await self.discovery.aclose()
        await self.members.aclose()
        if self.watchdog is not None:
            await self.watchdog.aclose()
        await self.poller.aclose()
        await self.reloader.aclose()
        self.observer.close()
        if self.backend_client is not None:
            await self.backend_client.close()
        for images in (*self._retired_images, self.images):
            await images.aclose()
        await self._close_store()  # last: requests that finish during the shutdown may still store

    def apply_config(self, config: Config, keys: KeyChecker, presets: PresetRegistry) -> list[str]:
        """A reloaded config (fleet/reload.py checked it): each part re-configured by its own method, for
        requests that start from now on; returns the backends that join or drain."""
        g, old = config.gateway, self.config
        self.keys, self.presets = keys, presets
        if config.images != old.images:
            self._retired_images.append(self.images)  # in-flight requests may still use it; closed at shutdown
            self.images = ImageNormalizer(config.images)
        self.balancer.configure(queue_size=g.queue.size, queue_timeout_s=g.queue.timeout_s,
                                affinity_load=g.affinity.load, affinity_wait_s=g.affinity.wait_s)
        self.key_limits.configure(g.key_limits, queue_size=g.queue.size, queue_timeout_s=g.queue.timeout_s)
        self.poller.configure(interval_s=g.health.interval_s, busy_interval_s=g.health.busy_interval_s)
        if self.watchdog is not None:
            self.watchdog.configure(g.watchdog)
        if self.forwarder is not None:
            self.forwarder.configure(g)
        self.config = config
        if self.discovery is None:  # `vlgate up`: the launcher owns the backend list
            return []
        added, removed = self.members.sync(STATIC, static_backends(config.backends, g.default_slots))
        self.discovery.configure(config)
        return [f"backend {n} joins" for n in added] + [f"backend {n} drains" for n in removed]

    def start_draining(self) -> None:
        self.balancer.draining = True

    def finish(self, ctx: RequestContext, status: int) -> None:
        duration = time.perf_counter() - ctx.started
        self.metrics.observe(ctx.route, status, duration, ctx.ttfb)
        # the usage the backend reported, read once: for the per-key counters and the tokens-per-minute limit
        tokens = charged_tokens(ctx.answer, ctx.tail, ctx.spent, status)
        self.observer.finish(ctx, status, duration, tokens)
        if ctx.release_key is not None:
            ctx.release_key()
        if tokens is not None and ctx.charges.tokens:
            self.key_limits.record_tokens(ctx.key, tokens.prompt + tokens.completion)
        if self.config.gateway.log_json:  # the fields go top level in the JSON line (cli/common.py JsonFormatter)
            access_log.info("%s %d", ctx.route, status, extra={
                "id": ctx.id, "route": ctx.route, "key": ctx.key, "backend": ctx.backend, "status": status,
                "attempts": ctx.attempts, "stream": ctx.stream,
                "ttfb_ms": round(ctx.ttfb * 1000, 2) if ctx.ttfb is not None else None,
                "duration_ms": round(duration * 1000, 2), "mid_stream_error": ctx.mid_stream_error,
                "prompt_tokens": tokens.prompt if tokens is not None else None,
                "completion_tokens": tokens.completion if tokens is not None else None,
            })


def gateway_of(request: Request) -> Gateway:
    """The app's Gateway (set by `create_app`)."""
    return request.app.state.gateway


def authorized(request: Request) -> Gateway:
    """The app's Gateway, once the request's API key checks out (the /v1 GET routes need one too)."""
    gw = gateway_of(request)
    gw.keys.check(header_credentials(request.headers))
    return gw
