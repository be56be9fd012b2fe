"""One image's work cut into bands that idle cores do at once: lower latency when the machine has room.

Used for big lossless images (a 4K screenshot): PNG unfiltering (png.py) and resize + TGA encode (bands.py),
whose C code releases the GIL. The caller does the first band itself and takes back every band no helper
thread has started yet, so when every core is already busy (many images in flight) nothing waits on a
queue: the split then costs only a few function calls, and images/s are what they were.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

MAX_BANDS = 4
_helpers: ThreadPoolExecutor | None = None


def cpus() -> int:
    """CPUs this process may run on (a gateway pinned with taskset to one gets one band)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def bands(total: int, work_bytes: int, min_bytes: int) -> int:
    """How many bands: one per usable CPU (at most MAX_BANDS), none smaller than `min_bytes` of work."""
    return max(1, min(MAX_BANDS, cpus(), total, work_bytes // max(1, min_bytes)))


def run(fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """[fn(item) for item in items], items after the first on helper threads while the caller does the first."""
    global _helpers
    if len(items) <= 1:
        return [fn(item) for item in items]
    if _helpers is None:
        _helpers = ThreadPoolExecutor(MAX_BANDS - 1, thread_name_prefix="vlgate-band", initializer=lower_priority)
    futures: list[Future[R]] = [_helpers.submit(fn, item) for item in items[1:]]
    try:
        results = [fn(items[0])]
    except BaseException:
        for future in futures:
            future.cancel()
        raise
    for item, future in zip(items[1:], futures, strict=True):
        results.append(fn(item) if future.cancel() else future.result())
    return results


_NICE = 10


def lower_priority() -> None:
    """Image workers yield the CPU to the event loop: on a busy core a text request's few loop turns then do
    not queue behind decodes (Linux nice is per thread, so this lowers only the worker thread or process)."""
    try:
        os.setpriority(os.PRIO_PROCESS, 0, _NICE)
    except (OSError, AttributeError):  # not permitted, or not Linux: the work runs at normal priority
        pass
