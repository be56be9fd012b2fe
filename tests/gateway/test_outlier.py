"""Outlier ejection, panic mode, the retry budget and failing fast when no backend can serve."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from support.clock import FakeClock
from support.fakebackend import FakeBackend
from support.gateway_process import GatewayProcess
from vlgate.backends import Backend, BackendState
from vlgate.config import GatewayConfig, OutlierConfig
from vlgate.errors import APIError
from vlgate.gateway.fleet.poller import check_backend
from vlgate.gateway.forward.forwarder import Forwarder, new_client
from vlgate.gateway.forward.outlier import OutlierDetector
from vlgate.gateway.routing.balancer import Balancer

HELLO = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def ready(name: str, slots: int = 2) -> Backend:
    b = Backend(url=f"http://{name}", name=name, slots=slots)
    b.set_state(BackendState.READY)
    return b



def test_consecutive_failures_eject_for_growing_periods() -> None:
    a, b = ready("a"), ready("b")
    clock = FakeClock()
    det = OutlierDetector(lambda: [a, b], OutlierConfig(consecutive_failures=3, base_ejection_s=5, max_ejection_s=12),
                          clock)
    det.failure(a, BackendState.SUSPECT, "reset")
    det.failure(a, BackendState.SUSPECT, "reset")
    det.success(a)  # an answer in between: the count starts again
    det.failure(a, BackendState.SUSPECT, "reset")
    det.failure(a, BackendState.SUSPECT, "reset")
    assert a.state is BackendState.READY
    det.failure(a, BackendState.SUSPECT, "reset")
    assert a.state is BackendState.SUSPECT and "ejected for 5s" in a.reason
    assert det.ejected(a) and a.ejected_until == clock.now + 5
    periods = []
    for _ in range(3):  # each repeat ejection lasts longer, up to the cap
        clock.now = a.ejected_until
        a.set_state(BackendState.READY)
        for _ in range(3):
            det.failure(a, BackendState.SUSPECT, "reset")
        periods.append(a.ejected_until - clock.now)
    assert periods == [10, 12, 12]


def test_the_last_ready_backend_is_never_ejected() -> None:
    a, b = ready("a"), ready("b")
    b.set_state(BackendState.DOWN, "connection refused")
    det = OutlierDetector(lambda: [a, b], OutlierConfig(consecutive_failures=1))
    for _ in range(10):
        det.failure(a, BackendState.SUSPECT, "stream died")
    assert a.state is BackendState.READY and a.failures == 10


def test_health_checks_bring_a_backend_back_only_after_its_ejection() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"status": "ok"} if request.url.path == "/health" else [{"id": 0}])

    async def scenario() -> None:
        a = ready("a")
        a.set_state(BackendState.SUSPECT, "ejected")
        async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
            a.ejected_until = time.monotonic() + 60
            await check_backend(client, a, manage_all=True)
            assert a.state is BackendState.SUSPECT
            a.ejected_until = time.monotonic() - 1
            await check_backend(client, a, manage_all=True)
            assert a.state is BackendState.READY

    asyncio.run(scenario())


def test_no_backend_that_can_serve_fails_fast_and_fails_the_queue() -> None:
    async def scenario() -> None:
        a, b = ready("a", 1), ready("b", 1)
        bal = Balancer([a, b], queue_timeout_s=30)
        held = [await bal.acquire(), await bal.acquire()]
        waiting = asyncio.create_task(bal.acquire())
        await asyncio.sleep(0)
        assert bal.queued == 1
        started = time.monotonic()
        a.set_state(BackendState.DOWN, "connection refused")
        b.set_state(BackendState.FAILED, "crash loop")
        with pytest.raises(APIError) as queued:
            await waiting
        with pytest.raises(APIError) as fresh:
            await bal.acquire()
        assert time.monotonic() - started < 1  # not the 30 s queue deadline
        for err in (queued.value, fresh.value):
            assert err.status == 503 and err.code == "no_backend" and "Retry-After" in err.headers
        del held

    asyncio.run(scenario())


def test_retry_budget_caps_retries_in_progress() -> None:
    async def scenario() -> None:
        backends = [ready(f"b{i}", 100) for i in range(2)]
        bal = Balancer(backends)
        cfg = GatewayConfig(outlier=OutlierConfig(retry_budget_ratio=0.2, min_retry_concurrency=3))
        fwd = Forwarder(new_client(), bal, cfg)
        try:
            for b in backends:
                b.in_flight = 10  # 20 active requests: 20% is 4 retries at once
            fwd.retrying = 3
            assert fwd._retry_allowed()
            fwd.retrying = 4
            assert not fwd._retry_allowed()
            for b in backends:
                b.in_flight = 0  # idle: still the minimum of 3
            fwd.retrying = 2
            assert fwd._retry_allowed()
            fwd.retrying = 3
            assert not fwd._retry_allowed()
        finally:
            await fwd.client.close()

    asyncio.run(scenario())


def test_one_failed_stream_does_not_take_the_only_backend_out(tmp_path) -> None:
    """Before: one failed stream marked the only backend suspect and /ready flapped to 503."""
    fb = FakeBackend(mode="die_after", die_after=2).start()
    gw = GatewayProcess({"backends": [{"url": fb.url}]}, tmp_path).start()
    try:
        gw.wait_ready()
        for _ in range(5):
            with httpx.stream("POST", gw.url + "/v1/chat/completions", json={**HELLO, "stream": True}) as r:
                text = r.read().decode()
            assert '"error"' in text and "[DONE]" not in text  # each failure is still signalled
            assert httpx.get(gw.url + "/ready").status_code == 200
        fb.mode = "ok"
        r = httpx.post(gw.url + "/v1/chat/completions", json=HELLO)
        assert r.status_code == 200
    finally:
        gw.stop()
        fb.stop()


def test_all_backends_refusing_connections_fail_fast(tmp_path) -> None:
    fb = FakeBackend().start()
    gw = GatewayProcess({"backends": [{"url": fb.url}], "gateway": {"queue": {"timeout_s": 30}}}, tmp_path).start()
    try:
        gw.wait_ready()
        fb.stop()
        deadline = time.monotonic() + 10
        while gw.ready()["backends"][0]["state"] != "down" and time.monotonic() < deadline:
            time.sleep(0.1)
        started = time.monotonic()
        r = httpx.post(gw.url + "/v1/chat/completions", json=HELLO, timeout=60)
        assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1
        assert r.headers["x-should-retry"] == "false"
        assert time.monotonic() - started < 2, "waited for the queue deadline"
    finally:
        gw.stop()
