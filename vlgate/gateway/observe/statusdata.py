"""The status snapshot (`GET /status`): the gateway, every backend, usage per key — one JSON for page and CLI.

An admin (or anyone, on a gateway without keys) sees it all; a user key sees the gateway's load, its
own usage, and the backends without addresses: no URL, no name that holds an address (DNS-discovered
backends are named `<dns>/<address>`), no error text (which quotes URLs). `public_backends` is that
view, shared with `/ready`.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter

from vlgate import __version__
from vlgate.backends import Backend
from vlgate.gateway.frontdoor.auth import OPEN, Access

if TYPE_CHECKING:
    from vlgate.gateway.gateway import Gateway


def _rate(hits: int, total: int) -> float | None:
    return round(hits / total, 4) if total else None


def _counter_total(counter: Counter) -> float:
    return sum(s.value for m in counter.collect() for s in m.samples if s.name.endswith("_total"))


def _sample(families: list[Any], name: str) -> float | None:
    return next((s.value for f in families for s in f.samples if s.name == name), None)


def describe_backend(gw: Gateway, backend: Backend) -> dict[str, Any]:
    obs = gw.observer
    scrape = obs.scraper.last.get(backend.name)
    events = obs.events.get(backend.name)
    check = gw.token_checks.get(backend.name)
    line = obs.timelines.of(backend.name)
    families = scrape.families if scrape else []
    return {
        **backend.describe(),
        "gpu": backend.gpu,
        "since_s": round(time.monotonic() - backend.changed_at, 1),
        "slots_busy": scrape.slots_busy if scrape else None,
        "processing": _sample(families, "llamacpp:requests_processing"),
        "deferred": _sample(families, "llamacpp:requests_deferred"),
        "restarts": events.restarts if events else 0,
        "last_error": events.last_error if events else "",
        "last_error_at": events.last_error_at if events else None,
        "structure_tokens": None if check is None else {"ok": check.ok, "reason": check.reason},
        "gpu_stats": scrape.gpu.describe() if scrape and scrape.gpu else None,
        "scrape_ms": round(scrape.seconds * 1000, 2) if scrape else None,
        **line.rates(),
        "series": line.series(),
    }


# what a user key may see of a backend (everything else may carry an address, or is the fleet's business)
_PUBLIC = ("state", "slots", "in_flight", "served", "slots_busy", "processing", "deferred", "since_s", "restarts",
           "gpu_stats", "rps", "tps", "p50_ms", "p99_ms", "ttft_p50_ms", "series")


def public_names(backends: list[Backend]) -> list[str]:
    """Backend names without addresses: `<dns>/<address>` becomes `<dns>/#<n>` (n: its place in that group)."""
    seen: dict[str, int] = {}
    names = []
    for backend in backends:
        base, slash, _ = backend.name.partition("/")
        if slash:
            seen[base] = seen.get(base, 0) + 1
            names.append(f"{base}/#{seen[base]}")
        else:
            names.append(backend.name)
    return names


def public_backends(backends: list[Backend], described: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`described` (one dict per backend) cut to what a user key may see."""
    return [{"name": name, **{k: d[k] for k in _PUBLIC if k in d}}
            for name, d in zip(public_names(backends), described, strict=True)]


def public_reason(gw: Gateway) -> str:
    """Why the gateway is not ready, without backend reasons (they quote URLs)."""
    b = gw.balancer
    if b.draining or not gw.backends:
        return b.not_ready_reason()
    return "; ".join(f"{name}: {x.state.value}" for name, x in zip(public_names(gw.backends), gw.backends, strict=True))


def snapshot(gw: Gateway, access: Access = OPEN) -> dict[str, Any]:
    """The whole status for an admin; for a user key, its own usage and backends without addresses."""
    data = _full(gw)
    data["role"], data["key"] = ("admin" if access.admin else "user"), access.name
    if access.admin:
        return data
    data["backends"] = public_backends(gw.backends, data["backends"])
    data["keys"] = [k for k in data["keys"] if k["name"] == access.name]
    data["reason"] = public_reason(gw) if data["reason"] else ""
    data["store"] = {k: v for k, v in data["store"].items() if k in ("enabled", "backend")}  # sizes: the operator's
    return data


def _full(gw: Gateway) -> dict[str, Any]:
    b = gw.balancer
    obs = gw.observer
    ok = not b.draining and bool(b.ready_backends())
    cache = gw.images.cache
    served = sum(x.served for x in gw.backends)
    statuses = obs.statuses
    return {
        "version": __version__,
        "model": gw.config.gateway.model,
        "time": time.time(),
        "uptime_s": round(time.time() - obs.started, 1),
        "status": "ready" if ok else "unavailable",
        "reason": "" if ok else b.not_ready_reason(),
        "draining": b.draining,
        "gateway": {
            "in_flight": b.in_flight(),
            "queued": b.queued,
            "queue_size": b.queue_size,
            "requests": sum(statuses.values()),
            "status_429": statuses.get(429, 0),
            "status_503": statuses.get(503, 0),
            "errors_5xx": sum(n for s, n in statuses.items() if s >= 500),
            "retries": int(_counter_total(gw.metrics.retries)),
            "loop_lag_ms": round(gw.loop_lag.recent_max_s * 1000, 1),  # worst of the last 10-20 s
            "image_cache": {"hits": cache.hits, "misses": cache.misses,
                            "hit_rate": _rate(cache.hits, cache.hits + cache.misses)},
            "affinity": {"hits": b.affinity_hits, "served": served, "hit_rate": _rate(b.affinity_hits, served)},
            **obs.timelines.gateway.rates(),
        },
        "series": obs.timelines.gateway.series(),
        "backends": [describe_backend(gw, x) for x in gw.backends],
        "keys": obs.usage.describe(),
        # stored responses, conversations, files, batch jobs: backend, size per kind, jobs by status
        "store": gw.store_stats.status() if gw.store_stats is not None else {"enabled": False},
    }
