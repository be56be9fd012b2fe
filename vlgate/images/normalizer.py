"""The request-path entry point: every image of a chat body becomes a data: URL the gateway produced.

Event-loop side only (parsing, fetching, caching, ordering); pixel work runs in workers (images/workers.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from vlgate.images import dataurl
from vlgate.images.budget import ByteBudget
from vlgate.images.cache import NormalizedCache
from vlgate.images.decode import available_formats
from vlgate.images.fetch import Fetcher
from vlgate.images.parts import ImagePart, find_images
from vlgate.images.pipeline import Normalized, Pipeline
from vlgate.images.settings import ImageSettings
from vlgate.images.tier import Marks, TierTrust
from vlgate.images.types import ImageError, ImageInfo
from vlgate.images.workers import PixelPool

log = logging.getLogger(__name__)



class ImageNormalizer:
    # wraps the work on a body's images (given their count): a trace span when the gateway traces
    # (gateway/observe/tracing.py sets it), else a context manager that does nothing
    observe: Callable[[int], AbstractContextManager[object]] = staticmethod(lambda _count: nullcontext())

    def __init__(self, settings: ImageSettings) -> None:
        self.settings = settings
        self.formats = available_formats(settings.formats)
        pipeline = Pipeline(settings.grid.to_rule(), tuple(self.formats), settings.limits, settings.encode)
        self.cache = NormalizedCache(settings.cache.max_entries, settings.cache.max_bytes)
        self.pixels = PixelPool(pipeline, settings.workers, settings.pool, settings.pillow_block_cache_mb)
        self._fetcher = Fetcher(settings.fetch)
        self._inflight: dict[str, asyncio.Task[Normalized]] = {}
        self.processed = 0  # pipeline runs (cache misses that did the work)
        # two tiers: marks the images it normalized, passes on those a front tier with the secret did (tier.py)
        secret = _tier_secret(settings)
        self.tier = TierTrust(secret, settings.grid.to_rule()) if secret is not None else None

    async def normalize_body(self, body: dict[str, Any]) -> list[ImageInfo]:
        """Rewrite every image_url part of body["messages"] in place to a data: URL of the normalized image;
        return one ImageInfo per image in message order. Raises ImageError (400) on any bad image or limit.
        The body is only modified when every image succeeded."""
        parts = find_images(body)
        if not parts:
            return []
        if not self.settings.enabled:
            raise ImageError("this gateway does not accept images", param=parts[0].param)
        limit = self.settings.limits.max_images
        if len(parts) > limit:
            raise ImageError(f"too many images: {len(parts)}, the limit is {limit}", param=parts[limit].param,
                             code="too_many_images")
        budget = ByteBudget(self.settings.limits.max_image_bytes, self.settings.limits.max_request_bytes)
        marks = self.tier.incoming() if self.tier is not None else None
        with self.observe(len(parts)):
            results = await _all_or_first_error([self._one(part, budget, marks) for part in parts])
        for part, result in zip(parts, results, strict=True):
            part.write(result.data_url)
        if self.tier is not None:
            self.tier.mark(results)
        return [result.info for result in results]

    async def _one(self, part: ImagePart, budget: ByteBudget, marks: Marks | None = None) -> Normalized:
        try:
            if dataurl.is_data_url(part.url):
                is_b64, payload = dataurl.split(part.url, budget)
                raw, key = await self.pixels.decode_and_hash(is_b64, payload)
                budget.take(len(raw))
                if marks is not None and self.tier is not None and (
                        done := self.tier.vouched(marks, key, len(raw), is_b64, payload, part.url)) is not None:
                    return done  # the front tier normalized it (tier.py)
            else:
                scheme = part.url.split(":", 1)[0].lower() if ":" in part.url else ""
                if scheme not in ("http", "https"):
                    raise ImageError(f"unsupported image URL scheme '{scheme}': use a data: or https:// URL",
                                     code="image_url_refused")
                if not self.settings.fetch.enabled:
                    raise ImageError("image URLs are not accepted here: send the image as a data: URL",
                                     code="image_url_refused")
                raw = await self._fetcher.fetch(part.url, budget)
                key = await self.pixels.sha256(raw)
            return await self._normalized(key, raw)
        except ImageError as e:  # a fresh error: one from a shared in-flight task may serve several requests
            raise ImageError(e.message, param=part.param, status=e.status,
                             code=str(e.code or "invalid_image")) from None

    async def _normalized(self, key: str, raw: bytes) -> Normalized:
        """Cached, or joined to an identical image already in work, or run once in the pool."""
        hit = self.cache.get(key)
        if hit is not None:
            return hit
        task = self._inflight.get(key)
        if task is None:
            # a task of its own: a cancelled request must not cancel work other requests wait on
            task = asyncio.ensure_future(self._run(key, raw))
            self._inflight[key] = task
            task.add_done_callback(lambda _t: self._inflight.pop(key, None))
        return await asyncio.shield(task)

    async def _run(self, key: str, raw: bytes) -> Normalized:
        try:
            result = await self.pixels.normalize(raw)
        except ImageError:
            raise
        except Exception as e:  # a decoder bug must still be a 400 for this image, not a 500
            log.exception("image normalization failed unexpectedly")
            raise ImageError(f"cannot process image: {type(e).__name__}: {e}"[:300]) from None
        self.processed += 1
        self.cache.put(key, result)
        return result

    async def aclose(self) -> None:
        await self._fetcher.aclose()
        self.pixels.shutdown()


def _tier_secret(settings: ImageSettings) -> str | None:
    try:
        return settings.resolved_tier_secret()
    except ValueError as exc:  # one clear line at start (the CLI prints a ConfigError), not a traceback
        from vlgate.config import ConfigError

        raise ConfigError(str(exc)) from None


async def _all_or_first_error(coros: list[Any]) -> list[Any]:
    """Run concurrently; on the first failure cancel the rest and raise the error of the earliest image."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for t in tasks:
            if not t.done():
                t.cancel()
    if any(not t.done() for t in tasks):
        await asyncio.gather(*tasks, return_exceptions=True)
    for t in tasks:
        if not t.cancelled() and (exc := t.exception()) is not None:
            raise exc
    return [t.result() for t in tasks]
