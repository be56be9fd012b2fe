"""Hot reload: SIGHUP (or `vlgate reload`) re-reads the config file; new requests see the new one.

Added backends join, removed ones drain; keys, per-key limits, presets, timeouts, retries and the
queue apply to requests that start after the reload, in-flight requests keep what they started
with. A file that does not load (bad YAML, a failed check, an unreadable keys file) is refused: the
reason goes to the log and to `/ready` (`config`), and the running config stays. The listen
address, its front-door limits and the launcher's settings need a restart; a reload says so.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import ValidationError

from vlgate.config import Config, ConfigError, GatewayConfig
from vlgate.gateway.fleet.discovery import DnsDiscovery
from vlgate.gateway.frontdoor.auth import KeyChecker
from vlgate.presets import PresetRegistry

log = logging.getLogger("vlgate.gateway.fleet.reload")

_RESTART_ONLY = ("host", "port", "limits", "pipeline_full_size")  # set up once: the listener, its front door


class Reloadable(Protocol):
    """What a reload needs of the gateway (gateway/gateway.py): its config, and one way to apply a new one.
    The gateway re-configures its own parts; the reloader only reads, checks and reports."""

    config: Config
    discovery: DnsDiscovery | None

    def apply_config(self, config: Config, keys: KeyChecker, presets: PresetRegistry) -> list[str]: ...


@dataclass
class ConfigStatus:
    """What `/ready` says about the config: which generation runs, and why the last reload was refused."""

    generation: int = 1
    loaded_at: float = field(default_factory=time.time)
    error: str = ""
    refused_at: float | None = None
    changes: list[str] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        return {"generation": self.generation, "loaded_at": round(self.loaded_at, 3), "reload_error": self.error,
                "refused_at": self.refused_at and round(self.refused_at, 3), "last_changes": self.changes}


@dataclass
class _Prepared:
    """Everything that can fail, built before anything is swapped."""

    config: Config
    keys: KeyChecker
    presets: PresetRegistry


class Reloader:
    def __init__(self, gw: Reloadable, load: Callable[[], Config] | None) -> None:
        self.gw = gw
        self.load = load
        self.status = ConfigStatus()
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[bool]] = set()

    def install_signal(self) -> None:
        """SIGHUP -> reload (main thread only: that is where signals arrive)."""
        if threading.current_thread() is not threading.main_thread():
            return
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.trigger)

    def trigger(self) -> None:
        task = asyncio.get_running_loop().create_task(self.reload())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def reload(self) -> bool:
        """Re-read and apply the config; False (old config kept) when it is refused."""
        async with self._lock:
            started = time.perf_counter()
            if self.load is None:  # SIGHUP still must not kill the process (its default action)
                log.warning("config reload asked for, but this gateway was started without a config to re-read")
                return False
            try:
                prepared = self._prepare(self.load())
            except (ConfigError, ValidationError, ValueError, OSError) as exc:
                self.status.error = str(exc)
                self.status.refused_at = time.time()
                log.error("config reload refused, the running config stays: %s", exc)
                return False
            self.status.changes = self._apply(prepared)
            if self.gw.discovery is not None:  # dns entries added by this reload: resolve now, not next round
                await self.gw.discovery.refresh()
            self.status.generation += 1
            self.status.loaded_at = time.time()
            self.status.error, self.status.refused_at = "", None
            log.info("config reloaded in %.0f ms (generation %d): %s", (time.perf_counter() - started) * 1000,
                     self.status.generation, "; ".join(self.status.changes) or "no changes")
            return True

    def _prepare(self, config: Config) -> _Prepared:
        return _Prepared(config, KeyChecker(config.resolved_api_keys()), PresetRegistry.load(config.presets))

    def _apply(self, p: _Prepared) -> list[str]:
        new, old = p.config, self.gw.config
        changes = [f"gateway.{k} changed: needs a restart" for k in _RESTART_ONLY
                   if getattr(new.gateway, k) != getattr(old.gateway, k)]
        if new.launcher != old.launcher:
            changes.append("launcher changed: needs a restart")
        changes += [f"gateway.{k} applied" for k in GatewayConfig.model_fields
                    if k not in _RESTART_ONLY and getattr(new.gateway, k) != getattr(old.gateway, k)]
        changes += [f"{section} applied" for section in ("presets", "images")
                    if getattr(new, section) != getattr(old, section)]
        return changes + self.gw.apply_config(new, p.keys, p.presets)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
