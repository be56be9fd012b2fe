"""`vlgate status`: the status page's numbers (`GET /status`) as text, once or `--watch`ed.

A client of the gateway's HTTP side only (it may run on another machine than the gateway). An admin
key (or a gateway without keys) shows the fleet; a user key its own usage and backends without URLs.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import httpx


class StatusError(Exception):
    """The gateway could not be asked (one line for the user)."""


def _n(v: Any, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}".rstrip("0").rstrip(".") if digits else str(round(v))
    return str(v)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{round(v * 100)}%"


def _duration(s: float) -> str:
    s = int(s)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60}s"
    return f"{s // 3600}h {s % 3600 // 60}m"


def _table(rows: Sequence[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def _gpu(b: dict[str, Any]) -> str:
    g = b.get("gpu_stats")
    if not g:
        return "-"
    return f"{g['memory_used'] / 2**30:.1f}/{g['memory_total'] / 2**30:.0f}G {g['utilization']}%"


def render(s: dict[str, Any], url: str) -> str:
    """The /status JSON as text: gateway line, one row per backend, then notes and usage per key."""
    g = s["gateway"]
    state = "draining" if s.get("draining") else s["status"]
    lines = [f"gateway {url} ({s['model']}, v{s['version']}): {state}, up {_duration(s['uptime_s'])}"]
    if s.get("reason"):
        lines.append(f"  reason: {s['reason']}")
    lines.append(f"  in flight {g['in_flight']}, queued {g['queued']}/{g['queue_size']}, {_n(g['rps'], 2)} req/s, "
                 f"{_n(g['tps'])} tok/s, p50 {_n(g.get('p50_ms'))} ms, p99 {_n(g.get('p99_ms'))} ms, "
                 f"TTFT p50 {_n(g.get('ttft_p50_ms'))} ms")
    lines.append(f"  requests {g['requests']}, 429 {g['status_429']}, 503 {g['status_503']}, "
                 f"retries {g['retries']}, image cache hits {_pct(g['image_cache']['hit_rate'])}, "
                 f"affinity hits {_pct(g['affinity']['hit_rate'])}")
    admin = s.get("role", "admin") == "admin"
    if not admin:
        lines.append(f"  (key {s.get('key')}: a user key sees its own usage and no backend addresses)")
    rows = [("NAME", "STATE", "GPU", "SLOTS", "IN-FLIGHT", "QUEUED", "REQ/S", "TOK/S", "P50MS", "P99MS", "TTFT50",
             "RESTARTS", "GPU-MEM", "URL")]
    notes = []
    for b in s["backends"]:
        busy = b.get("slots_busy")
        slots = f"{busy if busy is not None else b['in_flight']}/{b['slots']}"
        rows.append((b["name"], b["state"], _n(b.get("gpu")), slots,
                     _n(b["in_flight"]), _n(b.get("deferred")), _n(b.get("rps"), 2), _n(b.get("tps")),
                     _n(b.get("p50_ms")), _n(b.get("p99_ms")), _n(b.get("ttft_p50_ms")), _n(b.get("restarts")),
                     _gpu(b), b.get("url") or "-"))
        if b.get("reason"):
            notes.append(f"  {b['name']}: {b['reason']}")
        elif b.get("last_error"):
            notes.append(f"  {b['name']} last error: {b['last_error']}")
        tokens = b.get("structure_tokens")
        if tokens and tokens.get("ok") is False:
            notes.append(f"  {b['name']}: structure tokens stripped: {tokens.get('reason')}")
    lines += _table(rows if admin else [r[:-1] for r in rows]) + notes
    if s.get("keys"):
        keys = [("KEY", "REQUESTS", "BY-STATUS", "PROMPT-TOKENS", "COMPLETION-TOKENS", "IMAGES")]
        for k in s["keys"]:
            by = " ".join(f"{st}:{n}" for st, n in sorted(k["requests"].items()))
            keys.append((k["name"], str(sum(k["requests"].values())), by, str(k["prompt_tokens"]),
                         str(k["completion_tokens"]), str(k["images"])))
        lines += [""] + _table(keys)
    return "\n".join(lines)


def fetch(url: str, key: str | None, timeout: float) -> tuple[int, dict[str, Any] | None]:
    """(HTTP status, /status JSON); (404, None) from a gateway without /status."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        r = httpx.get(url + "/status", headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        raise StatusError(f"cannot reach the gateway at {url} ({type(exc).__name__}); is `vlgate up` running? "
                          "(pass --url for another address)") from None
    if r.status_code == 401:
        raise StatusError(f"{url}/status needs an API key: pass --key or set VLGATE_API_KEY")
    if r.status_code == 403:  # e.g. a Host this gateway does not serve (gateway.allowed_hosts)
        try:
            reason = r.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            reason = r.text[:200]
        raise StatusError(f"{url}/status refused: {reason}")
    if r.status_code == 404:
        return 404, None
    try:
        return r.status_code, r.json()
    except ValueError:
        raise StatusError(f"{url}/status did not answer JSON (HTTP {r.status_code}); "
                          "is that a vlgate gateway?") from None


def watch(show: Callable[[], int], interval: float, count: int | None, out: Any = sys.stdout) -> int:
    """Redraw every `interval` s (`count` times, or until Ctrl-C); the terminal is cleared when it is one."""
    shown = 0
    code = 0
    try:
        while count is None or shown < count:
            if shown:
                time.sleep(interval)
            if out.isatty():
                out.write("\x1b[H\x1b[2J")
            code = show()
            out.flush()
            shown += 1
    except KeyboardInterrupt:
        pass
    return code


def default_key() -> str | None:
    return os.environ.get("VLGATE_API_KEY") or None
