"""Download an image URL under the SSRF rules, with byte limits enforced while the body streams in."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
from yarl import URL

from vlgate.images.budget import ByteBudget
from vlgate.images.settings import FetchSettings
from vlgate.images.ssrf import BlockedTarget, GuardedResolver, check_url
from vlgate.images.types import ImageError

log = logging.getLogger(__name__)

_REDIRECTS = (301, 302, 303, 307, 308)
_CHUNK = 64 * 1024


class Fetcher:
    """One pooled aiohttp session; redirects followed by hand so every hop is checked and counted."""

    def __init__(self, settings: FetchSettings) -> None:
        self._settings = settings
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                resolver=GuardedResolver(self._settings),
                use_dns_cache=False,  # each connection resolves (and checks) afresh
                limit=self._settings.max_connections,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                trust_env=False,  # never route through an environment proxy that could reach inside
                auto_decompress=False,  # limits count the bytes we keep; a gzip bomb stays compressed garbage
                cookie_jar=aiohttp.DummyCookieJar(),
                headers={
                    "User-Agent": self._settings.user_agent,
                    "Accept": "image/*,*/*;q=0.5",
                    "Accept-Encoding": "identity",
                },
            )
        return self._session

    async def fetch(self, url: str, budget: ByteBudget) -> bytes:
        timeout = self._settings.timeout_s
        try:
            async with asyncio.timeout(timeout):
                return await self._follow(url, budget)
        except TimeoutError:
            raise ImageError(f"fetching the image timed out after {timeout:g} s", code="image_fetch_timeout") from None

    async def _follow(self, url: str, budget: ByteBudget) -> bytes:
        current: str | URL = url
        for _hop in range(self._settings.max_redirects + 1):
            target = _checked(current, self._settings)
            try:
                async with self._client().get(target, allow_redirects=False) as resp:
                    if resp.status in _REDIRECTS:
                        location = resp.headers.get("Location")
                        if not location:
                            raise ImageError(f"fetching the image failed: HTTP {resp.status} without Location")
                        current = target.join(URL(location))
                        continue
                    if resp.status != 200:
                        raise ImageError(f"fetching the image failed: HTTP {resp.status}", code="image_fetch_failed")
                    return await _read_limited(resp, budget)
            except aiohttp.ClientConnectorError as e:
                cause = e.os_error
                if isinstance(cause, BlockedTarget):
                    raise ImageError(f"image URL refused: {cause}", code="image_url_refused") from None
                raise ImageError(f"cannot connect to the image host: {cause}", code="image_fetch_failed") from None
            except (aiohttp.ClientError, ValueError) as e:
                raise ImageError(f"fetching the image failed: {e or type(e).__name__}",
                                 code="image_fetch_failed") from None
        raise ImageError(f"too many redirects (more than {self._settings.max_redirects})", code="image_fetch_failed")

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _checked(url: str | URL, settings: FetchSettings) -> URL:
    try:
        return check_url(url, settings)
    except BlockedTarget as e:
        raise ImageError(f"image URL refused: {e}", code="image_url_refused") from None


async def _read_limited(resp: aiohttp.ClientResponse, budget: ByteBudget) -> bytes:
    """Read the body; stop (and drop the connection) the moment a limit is crossed."""
    chunks: list[bytes] = []
    size = 0
    try:
        if resp.content_length is not None:
            budget.check(resp.content_length)
        async for chunk in resp.content.iter_chunked(_CHUNK):
            size += len(chunk)
            budget.check(size)
            chunks.append(chunk)
    except ImageError:
        resp.close()  # drop the connection: do not drain the rest of an oversized body
        raise
    budget.take(size)
    return b"".join(chunks)
