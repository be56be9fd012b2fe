"""Per API key limits: concurrency, requests and tokens per minute (429 + Retry-After).

A key over its concurrency waits in its own bounded FIFO instead of failing at once; the wait is
per key, before the balancer's queue, so one busy key cannot starve the others. Rates are sliding
one-minute windows; tokens are what the backends reported (counted when a request finishes). What a
request counts is its route's declared `Charges`; a pipeline preset's further backend calls take spare
places (`take_spare`) and count against the rate (`charge_call`).
Limits are per gateway replica; shared quotas across replicas would belong in Redis.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from vlgate.config import KeyLimitConfig
from vlgate.errors import APIError
from vlgate.gateway.endpoint.charges import GENERATION, Charges

WINDOW_S = 60.0


@dataclass
class _KeyState:
    running: int = 0
    waiters: deque[asyncio.Future[None]] = field(default_factory=deque)
    requests: deque[float] = field(default_factory=deque)
    tokens: deque[tuple[float, int]] = field(default_factory=deque)
    token_sum: int = 0


class KeyLimiter:
    def __init__(self, limits: Mapping[str, KeyLimitConfig], *, queue_size: int, queue_timeout_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = dict(limits)
        self.queue_size = queue_size
        self.queue_timeout_s = queue_timeout_s
        self.clock = clock
        self._keys: dict[str, _KeyState] = {}
        self.refused = 0

    def configure(self, limits: Mapping[str, KeyLimitConfig], *, queue_size: int, queue_timeout_s: float) -> None:
        """New limits for requests from now on (a config reload); running and waiting ones keep their places."""
        self.limits = dict(limits)
        self.queue_size = queue_size
        self.queue_timeout_s = queue_timeout_s

    def limit_of(self, key: str | None) -> KeyLimitConfig | None:
        if key is None:
            return None
        return self.limits.get(key) or self.limits.get("*")

    def _state(self, key: str) -> _KeyState:
        return self._keys.setdefault(key, _KeyState())

    def _expire(self, st: _KeyState, now: float) -> None:
        while st.requests and now - st.requests[0] >= WINDOW_S:
            st.requests.popleft()
        while st.tokens and now - st.tokens[0][0] >= WINDOW_S:
            st.token_sum -= st.tokens.popleft()[1]

    def _refuse(self, key: str, what: str, wait_s: float) -> APIError:
        self.refused += 1
        return APIError(429, f"API key '{key}' is over its {what}; retry in {math.ceil(wait_s)}s.",
                        code="rate_limit_exceeded", headers={"Retry-After": str(max(1, math.ceil(wait_s)))})

    async def admit(self, key: str | None, charges: Charges = GENERATION) -> Callable[[], None] | None:
        """Wait for the key's turn (or raise 429); returns the release to call when the request ends.
        What is counted is the route's declared `charges`."""
        cfg = self.limit_of(key)
        if cfg is None or key is None:
            return None
        st = self._state(key)
        now = self.clock()
        self._check_rates(key, cfg, st, now)
        if not charges.concurrency:
            if charges.requests:
                st.requests.append(now)
            return None
        if cfg.concurrency is not None and (st.running >= cfg.concurrency or st.waiters):
            await self._wait_turn(key, st, cfg.concurrency)
        else:
            st.running += 1
        if charges.requests:
            st.requests.append(now)
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                _pass_on(st)

        return release

    def _check_rates(self, key: str, cfg: KeyLimitConfig, st: _KeyState, now: float) -> None:
        self._expire(st, now)
        if cfg.requests_per_minute is not None and len(st.requests) >= cfg.requests_per_minute:
            raise self._refuse(key, f"{cfg.requests_per_minute} requests per minute",
                               WINDOW_S - (now - st.requests[0]))
        if cfg.tokens_per_minute is not None and st.token_sum >= cfg.tokens_per_minute:
            raise self._refuse(key, f"{cfg.tokens_per_minute} tokens per minute", WINDOW_S - (now - st.tokens[0][0]))

    def charge_call(self, key: str | None) -> None:
        """One more backend call of a request already admitted (a pipeline's next step): counted against the
        key's request rate, refused (429) once the key is over its rate or token budget."""
        cfg = self.limit_of(key)
        if cfg is None or key is None:
            return
        st = self._state(key)
        now = self.clock()
        self._check_rates(key, cfg, st, now)
        st.requests.append(now)

    def take_spare(self, key: str | None, wanted: int) -> int:
        """Up to `wanted` more concurrency places of the key, without waiting (none while others wait);
        `wanted` when the key has no concurrency limit. Give them back with `give_back`."""
        cfg = self.limit_of(key)
        if cfg is None or key is None or cfg.concurrency is None:
            return wanted
        st = self._state(key)
        taken = 0 if st.waiters else max(0, min(wanted, cfg.concurrency - st.running))
        st.running += taken
        return taken

    def give_back(self, key: str | None, places: int) -> None:
        cfg = self.limit_of(key)
        if cfg is None or key is None or cfg.concurrency is None:
            return
        st = self._state(key)
        for _ in range(places):
            _pass_on(st)

    async def _wait_turn(self, key: str, st: _KeyState, concurrency: int) -> None:
        if len(st.waiters) >= self.queue_size:
            raise self._refuse(key, f"concurrency of {concurrency} and its queue is full", 1)
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        st.waiters.append(turn)
        try:
            async with asyncio.timeout(self.queue_timeout_s):
                await turn
        except TimeoutError:
            if turn.done() and not turn.cancelled():  # the place came as the deadline passed
                _pass_on(st)
            raise self._refuse(key, f"concurrency of {concurrency} (waited {self.queue_timeout_s:g}s)", 1) from None
        except BaseException:
            if turn.done() and not turn.cancelled():  # got the place as it was cancelled: pass it on
                _pass_on(st)
            raise
        finally:
            if turn in st.waiters:
                st.waiters.remove(turn)

    def record_tokens(self, key: str | None, tokens: int) -> None:
        cfg = self.limit_of(key)
        if key is None or cfg is None or cfg.tokens_per_minute is None or tokens <= 0:
            return
        st = self._state(key)
        st.tokens.append((self.clock(), tokens))
        st.token_sum += tokens


def _pass_on(st: _KeyState) -> None:
    """A place of this key is free: hand it to the next waiter, in order."""
    st.running -= 1
    while st.waiters:
        nxt = st.waiters.popleft()
        if not nxt.done():
            st.running += 1
            nxt.set_result(None)
            return
