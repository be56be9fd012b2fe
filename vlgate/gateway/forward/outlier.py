"""Passive outlier ejection (Envoy's idea): a backend failing requests again and again is taken out for a while.

- Only failures of the backend count (connection errors, resets, timeouts, 503, dying mid-answer);
  any HTTP answer below 500 resets the count, and a 4xx is the client's fault, never the backend's.
- After `consecutive_failures` in a row the backend is ejected for `base_ejection_s`, doubled with
  each repeat ejection up to `max_ejection_s`; the health poller brings it back once that period has
  passed and `/health` answers (active checks).
- Panic mode: the last ready backend is never ejected by request failures. Refusing everything is
  worse than trying; only the health poller or the launcher may take it out.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from vlgate.backends import Backend, BackendState
from vlgate.config import OutlierConfig

log = logging.getLogger("vlgate.gateway.forward.outlier")


class OutlierDetector:
    def __init__(self, peers: Callable[[], list[Backend]], cfg: OutlierConfig,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.peers = peers
        self.cfg = cfg
        self.clock = clock
        self.ejections = 0  # total, for metrics

    def success(self, backend: Backend) -> None:
        backend.consecutive_failures = 0
        if backend.ejections and self.clock() - backend.ejected_until > self.cfg.max_ejection_s:
            backend.ejections = 0  # healthy for a long while: the next ejection starts short again

    def failure(self, backend: Backend, state: BackendState, reason: str) -> None:
        backend.failures += 1
        backend.consecutive_failures += 1
        if backend.state is not BackendState.READY or backend.consecutive_failures < self.cfg.consecutive_failures:
            return
        if not any(b is not backend and b.state is BackendState.READY for b in self.peers()):
            log.warning("backend %s keeps failing (%s) but is the last ready one: kept in rotation (panic mode)",
                        backend.name, reason)
            return
        period = min(self.cfg.base_ejection_s * 2 ** backend.ejections, self.cfg.max_ejection_s)
        backend.ejections += 1
        backend.ejected_until = self.clock() + period
        self.ejections += 1
        log.warning("backend %s ejected for %gs after %d failures in a row: %s", backend.name, period,
                    backend.consecutive_failures, reason)
        backend.mark_failed(state, f"{reason} (ejected for {period:g}s after "
                                   f"{backend.consecutive_failures} failures in a row)")

    def ejected(self, backend: Backend) -> bool:
        return self.clock() < backend.ejected_until
