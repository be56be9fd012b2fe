"""Backends: what the gateway knows about each llama-server (state, slots, exact in-flight count).

The launcher (in `vlgate up`) or the health poller (in `vlgate serve`) sets the state; the
balancer reads it. They meet here and nowhere else.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass, field


class BackendState(str, enum.Enum):  # noqa: UP042 - a StrEnum prints "ready", not "BackendState.READY", in logs
    STARTING = "starting"  # process launched, not answering yet
    LOADING = "loading"  # /health 503 "Loading model"
    READY = "ready"
    SUSPECT = "suspect"  # failed a request: no new work until a health check passes
    DOWN = "down"  # not reachable
    CRASHED = "crashed"
    RESTARTING = "restarting"
    FAILED = "failed"  # parked (crash loop): out of rotation for good
    DRAINING = "draining"
    STOPPED = "stopped"


@dataclass(eq=False)
class Backend:
    url: str
    name: str
    api_key: str | None = None
    slots: int = 1
    fixed_slots: bool = False  # set by the operator: never overwritten by /slots
    state: BackendState = BackendState.STARTING
    reason: str = ""
    in_flight: int = 0
    external_busy: int = 0  # slots /slots reports busy beyond our own in-flight: other gateway replicas' work
    served: int = 0  # requests sent here (counter, for tests and metrics)
    failures: int = 0
    consecutive_failures: int = 0  # request failures in a row (gateway/outlier.py)
    ejections: int = 0  # ejections in a row; the next lasts longer
    ejected_until: float = 0.0  # monotonic time; health checks may not bring it back before
    gpu: str | None = None  # CUDA_VISIBLE_DEVICES token under `vlgate up` (None: CPU or not launched here)
    changed_at: float = field(default_factory=time.monotonic)
    # set by the launcher while the backend is parked (crash loop): an operator's call restarts it now
    unpark: Callable[[], bool] | None = field(default=None, repr=False)
    # set by the launcher while the process runs: the gateway's watchdog asks for a restart of a wedged one
    restart: Callable[[str], None] | None = field(default=None, repr=False)
    listeners: list[Callable[[Backend], None]] = field(default_factory=list, repr=False)

    @property
    def free_slots(self) -> int:
        return self.slots - self.in_flight - self.external_busy

    @property
    def available(self) -> bool:
        return self.state is BackendState.READY

    def set_state(self, state: BackendState, reason: str = "") -> None:
        if state is self.state and reason == self.reason:
            return
        self.state = state
        self.reason = reason
        self.changed_at = time.monotonic()
        for listener in self.listeners:
            listener(self)

    def mark_failed(self, state: BackendState, reason: str) -> None:
        """A request saw this backend fail: take it out of rotation, but only from READY.

        Any other state belongs to whoever owns the lifecycle (the launcher in `vlgate up`, the
        poller in `vlgate serve`); a late request failure must not overwrite "crashed" or "restarting".
        """
        if self.state is BackendState.READY:
            self.set_state(state, reason)

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    @property
    def auth_head(self) -> bytes:
        """`auth_headers` as HTTP/1.1 header lines (the backend wire sends them with every request)."""
        return b"Authorization: Bearer " + self.api_key.encode("latin-1") + b"\r\n" if self.api_key else b""

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "url": self.url,
            "state": self.state.value,
            "reason": self.reason,
            "slots": self.slots,
            "in_flight": self.in_flight,
            "external_busy": self.external_busy,
            "served": self.served,
        }
