"""Where the pixel work runs: threads of the gateway's process (the default) or worker processes.

Threads share the GIL with the event loop. Pillow, simplejpeg, libdeflate and the resizer release it for
their inner loops, but base64, the glue between steps and some encoders do not, and a loop that wants the
GIL back can wait for the holder's switch interval (5 ms). In worker processes the loop only copies bytes
to and from a pipe and images/s are not bounded by the GIL. On the 2-core test machine the difference was
within its noise (bench/loop_stall.py: the loop's own stall p50 0.44-0.57 ms with processes against
0.62-0.84 ms with threads, text behind images dominated by llama-server sharing the cores), so threads
stay the default: no spawn at the first image (~0.5 s) and no workers' memory (~50 MB each).
Spawned workers import the main module again: it must guard its entry point (`vlgate` and `python -m`
do).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Literal

from vlgate.images import dataurl
from vlgate.images.decode import keep_pixel_memory
from vlgate.images.pipeline import Normalized, Pipeline
from vlgate.images.split import lower_priority

log = logging.getLogger(__name__)

_INLINE_BYTES = 64 * 1024  # smaller payloads are decoded/hashed on the loop: a hop to a worker would cost more
_pipeline: Pipeline | None = None  # a worker process's own, set by _start_worker


def _start_worker(pipeline: Pipeline, pixel_cache_mb: int) -> None:
    global _pipeline
    _pipeline = pipeline
    lower_priority()
    keep_pixel_memory(pixel_cache_mb)


def _normalize_in_worker(raw: bytes) -> Normalized:
    assert _pipeline is not None
    return _pipeline.run(raw)


def decode_and_hash(is_b64: bool, payload: str) -> tuple[bytes, str]:
    raw = dataurl.decode(is_b64, payload)
    return raw, hashlib.sha256(raw).hexdigest()


def sha256(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


class PixelPool:
    """Runs decoding, hashing and normalization off the event loop, in processes or threads (small payloads inline)."""

    def __init__(
        self, pipeline: Pipeline, workers: int, kind: Literal["process", "thread"], pixel_cache_mb: int
    ) -> None:
        self.pipeline = pipeline
        self.kind = kind
        self.workers = workers or os.cpu_count() or 1
        self.pixel_cache_mb = pixel_cache_mb
        # hashing a fetched image (hashlib drops the GIL) and, in thread mode, everything
        self._threads = ThreadPoolExecutor(self.workers, thread_name_prefix="vlgate-image", initializer=lower_priority)
        self._processes: ProcessPoolExecutor | None = None
        if kind == "thread":
            keep_pixel_memory(pixel_cache_mb)

    def _process_pool(self) -> ProcessPoolExecutor:
        if self._processes is None:
            # spawn, not fork: the gateway process has threads and an event loop that must not be copied
            self._processes = ProcessPoolExecutor(
                self.workers, mp_context=multiprocessing.get_context("spawn"),
                initializer=_start_worker, initargs=(self.pipeline, self.pixel_cache_mb))
        return self._processes

    async def _run(self, fn: Any, *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        if self.kind == "thread":
            return await loop.run_in_executor(self._threads, fn, *args)
        try:
            return await loop.run_in_executor(self._process_pool(), fn, *args)
        except BrokenProcessPool:  # a worker died (killed, out of memory): start new ones, try once more
            log.warning("an image worker process died; starting new ones")
            self._replace_processes()
            return await loop.run_in_executor(self._process_pool(), fn, *args)

    def _replace_processes(self) -> None:
        old, self._processes = self._processes, None
        if old is not None:
            old.shutdown(wait=False, cancel_futures=True)

    async def decode_and_hash(self, is_b64: bool, payload: str) -> tuple[bytes, str]:
        if len(payload) < _INLINE_BYTES:
            return decode_and_hash(is_b64, payload)
        return await self._run(decode_and_hash, is_b64, payload)

    async def sha256(self, raw: bytes) -> str:
        if len(raw) < _INLINE_BYTES:
            return sha256(raw)
        return await asyncio.get_running_loop().run_in_executor(self._threads, sha256, raw)

    async def normalize(self, raw: bytes) -> Normalized:
        if self.kind == "thread":
            return await self._run(self.pipeline.run, raw)
        return await self._run(_normalize_in_worker, raw)

    def shutdown(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)
        self._replace_processes()
