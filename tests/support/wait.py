"""Poll a condition until it holds: how long it took is often the measurement."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(pred: Callable[[], object], timeout: float, what: str, every: float = 0.02) -> float:
    """Seconds until `pred()` was true; AssertionError naming `what` after `timeout`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if pred():
            return time.monotonic() - started
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
