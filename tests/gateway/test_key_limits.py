"""Per API key limits: concurrency (waits, bounded, no starving other keys), requests and tokens per minute."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from support.clock import FakeClock
from support.fakebackend import FakeBackend
from support.gateway_process import GatewayProcess
from vlgate.config import KeyLimitConfig
from vlgate.errors import APIError
from vlgate.gateway.frontdoor.keylimits import KeyLimiter


async def admitted(pending: Awaitable[Callable[[], None] | None]) -> Callable[[], None]:
    """A place that came with a limit: its release."""
    release = await pending
    assert release is not None
    return release


def test_concurrency_waits_in_order_and_is_bounded() -> None:
    async def scenario() -> None:
        lim = KeyLimiter({"a": KeyLimitConfig(concurrency=1)}, queue_size=2, queue_timeout_s=0.3)
        first = await admitted(lim.admit("a"))
        second = asyncio.create_task(admitted(lim.admit("a")))
        third = asyncio.create_task(admitted(lim.admit("a")))
        await asyncio.sleep(0)
        with pytest.raises(APIError) as full:
            await lim.admit("a")
        assert full.value.status == 429 and full.value.headers["Retry-After"] == "1"
        assert await lim.admit("b") is None  # no limit for b: never waits behind a
        first()
        release2 = await second
        assert not third.done()  # FIFO: the third still waits for the second
        release2()
        (await third)()
        # the deadline: a waiter that never gets a place is refused, and leaks nothing
        hold = await admitted(lim.admit("a"))
        with pytest.raises(APIError) as late:
            await lim.admit("a")
        assert late.value.status == 429 and "waited 0.3s" in late.value.message
        hold()
        await asyncio.wait_for(admitted(lim.admit("a")), 0.1)

    asyncio.run(scenario())


def test_a_cancelled_waiter_passes_its_place_on() -> None:
    async def scenario() -> None:
        lim = KeyLimiter({"*": KeyLimitConfig(concurrency=1)}, queue_size=5, queue_timeout_s=5)
        first = await admitted(lim.admit("k"))
        gone = asyncio.create_task(lim.admit("k"))
        waiting = asyncio.create_task(admitted(lim.admit("k")))
        await asyncio.sleep(0)
        gone.cancel()
        first()
        await asyncio.wait_for(waiting, 1)

    asyncio.run(scenario())


def test_requests_and_tokens_per_minute() -> None:
    async def scenario() -> None:
        clock = FakeClock()
        lim = KeyLimiter({"*": KeyLimitConfig(requests_per_minute=2, tokens_per_minute=100)}, queue_size=5,
                         queue_timeout_s=5, clock=clock)
        for _ in range(2):
            release = await lim.admit("k")
            assert release is not None
            release()
        with pytest.raises(APIError) as rpm:
            await lim.admit("k")
        assert rpm.value.status == 429 and rpm.value.headers["Retry-After"] == "60"
        clock.now += 30
        with pytest.raises(APIError) as rpm2:
            await lim.admit("k")
        assert rpm2.value.headers["Retry-After"] == "30"
        clock.now += 31  # the window moved on
        release = await lim.admit("k")
        assert release is not None
        lim.record_tokens("k", 120)
        clock.now += 1
        with pytest.raises(APIError) as tpm:
            await lim.admit("k")
        assert "100 tokens per minute" in tpm.value.message and tpm.value.headers["Retry-After"] == "59"
        assert await lim.admit(None) is None  # no keys configured: no limits

    asyncio.run(scenario())


def test_a_busy_key_waits_and_does_not_starve_another(tmp_path) -> None:
    fb = FakeBackend(delay_s=0.4, slots=8).start()
    gw = GatewayProcess({"backends": [{"url": fb.url}],
                         "gateway": {"api_keys": [{"name": "team-a", "key": "ka"}, {"name": "team-b", "key": "kb"}],
                                     "key_limits": {"team-a": {"concurrency": 1, "requests_per_minute": 6}}}},
                        tmp_path).start()
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}

    def post(key: str) -> tuple[int, float, httpx.Headers]:
        started = time.monotonic()
        r = httpx.post(gw.url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"},
                       timeout=30)
        return r.status_code, time.monotonic() - started, r.headers

    try:
        gw.wait_ready()
        with ThreadPoolExecutor(8) as pool:
            a = [pool.submit(post, "ka") for _ in range(4)]
            time.sleep(0.1)
            b = pool.submit(post, "kb").result()
            a_results = [f.result() for f in a]
        assert b[0] == 200 and b[1] < 1.0  # team-b is not queued behind team-a
        assert [s for s, _, _ in a_results] == [200] * 4  # over its concurrency, team-a waited instead of failing
        assert max(t for _, t, _ in a_results) >= 1.5  # one at a time: 4 x 0.4 s
        statuses = [post("ka") for _ in range(3)]  # 4 + 3 > 6 per minute
        assert [s for s, _, _ in statuses][:2] == [200, 200] and statuses[2][0] == 429
        assert int(statuses[2][2]["retry-after"]) > 1
        metrics = httpx.get(gw.url + "/metrics").text
        assert "vlgate_key_limit_refusals_total 1.0" in metrics
    finally:
        gw.stop()
        fb.stop()
