"""Balancing across real llama-servers: free slots, affinity, queue, 429/503, dead and loading backends."""

from __future__ import annotations

import concurrent.futures as cf
import time
from pathlib import Path

import httpx
import pytest

from support.fakebackend import FakeBackend
from support.gateway_process import GatewayProcess

pytestmark = pytest.mark.slow

# a generation long enough (hundreds of ms on the tiny model) that concurrent requests overlap
SLOT_CTX = 7200
LONG = {"model": "youtu-vl", "max_tokens": 7000, "messages": [{"role": "user", "content": "tell a long story"}]}


def post(gw: GatewayProcess, body: dict, timeout: float = 60) -> httpx.Response:
    return httpx.post(gw.url + "/v1/chat/completions", json=body, timeout=timeout)


def busy_slots(url: str) -> int:
    return sum(s["is_processing"] for s in httpx.get(url + "/slots").json())


def wait_for(pred, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def test_load_follows_free_slots(llama_server, tmp_path: Path) -> None:
    big = llama_server(slots=3, ctx=3 * SLOT_CTX)
    small = llama_server(slots=1, ctx=SLOT_CTX)
    gw = GatewayProcess({"backends": [{"url": small.url, "name": "small"}, {"url": big.url, "name": "big"}]},
                        tmp_path).start()
    try:
        ready = gw.wait_ready(backends=2)
        assert {b["name"]: b["slots"] for b in ready["backends"]} == {"small": 1, "big": 3}
        with cf.ThreadPoolExecutor(4) as pool:
            futs = [pool.submit(post, gw, {**LONG, "messages": [{"role": "user", "content": f"story {i}"}]})
                    for i in range(4)]
            # while all four run: exactly one on the 1-slot backend, three on the 3-slot one
            wait_for(lambda: gw.ready()["in_flight"] == 4, what="4 in flight")
            by_name = {b["name"]: b["in_flight"] for b in gw.ready()["backends"]}
            assert by_name == {"small": 1, "big": 3}
            # llama-server assigns a slot a moment after the request arrives
            wait_for(lambda: busy_slots(small.url) == 1 and busy_slots(big.url) == 3, what="slots busy 1 + 3")
            assert all(f.result().status_code == 200 for f in futs)
    finally:
        gw.stop()


@pytest.fixture
def pair(llama_server, tmp_path: Path):
    """Two 2-slot backends named a and b behind a gateway."""
    a, b = llama_server(slots=2, ctx=1024), llama_server(slots=2, ctx=1024)
    gw = GatewayProcess({"backends": [{"url": a.url, "name": "a"}, {"url": b.url, "name": "b"}]}, tmp_path).start()
    gw.wait_ready(backends=2)
    yield gw, a, b
    gw.stop()


def test_affinity_prefers_the_backend_that_served_the_prefix(pair) -> None:
    gw, _, _ = pair
    convo = [{"role": "system", "content": "You are a helpful assistant."},
             {"role": "user", "content": "describe the sea"}]
    first = post(gw, {"model": "youtu-vl", "max_tokens": 3, "messages": convo})
    assert first.status_code == 200
    served = {x["name"]: x["served"] for x in gw.ready()["backends"]}
    home = max(served, key=served.get)
    for turn in range(4):  # same system prompt + first user turn, growing conversation
        body = {"model": "youtu-vl", "max_tokens": 3,
                "messages": convo + [{"role": "assistant", "content": "ok"},
                                     {"role": "user", "content": f"more {turn}"}]}
        assert post(gw, body).status_code == 200
    served = {x["name"]: x["served"] for x in gw.ready()["backends"]}
    assert served[home] == 5, served


def test_queue_then_429_then_503(llama_server, tmp_path: Path) -> None:
    srv = llama_server(slots=2, ctx=2 * SLOT_CTX)
    gw = GatewayProcess({"backends": [{"url": srv.url}],
                         "gateway": {"queue": {"size": 1, "timeout_s": 0.3}}}, tmp_path).start()
    try:
        gw.wait_ready()
        with cf.ThreadPoolExecutor(4) as pool:
            running = [pool.submit(post, gw, LONG) for _ in range(2)]
            wait_for(lambda: gw.ready()["in_flight"] == 2, what="2 in flight")
            queued = pool.submit(post, gw, LONG)
            wait_for(lambda: gw.ready()["queued"] == 1, what="1 queued")
            full = post(gw, LONG)
            assert full.status_code == 429
            assert full.headers["retry-after"].isdigit()
            assert full.headers["x-should-retry"] == "false"
            assert full.json()["error"]["code"] == "queue_full"
            # never more on llama-server than it has slots
            assert busy_slots(srv.url) <= 2
            late = queued.result()
            if late.status_code == 503:  # the 0.3 s deadline passed before a slot freed
                assert late.json()["error"]["code"] == "queue_timeout" and "retry-after" in late.headers
            else:
                assert late.status_code == 200
            assert all(f.result().status_code == 200 for f in running)
    finally:
        gw.stop()


def test_queue_deadline_gives_503(llama_server, tmp_path: Path) -> None:
    srv = llama_server(slots=1, ctx=SLOT_CTX)
    gw = GatewayProcess({"backends": [{"url": srv.url}],
                         "gateway": {"queue": {"size": 4, "timeout_s": 0.05}}}, tmp_path).start()
    try:
        gw.wait_ready()
        with cf.ThreadPoolExecutor(2) as pool:
            running = pool.submit(post, gw, LONG)
            wait_for(lambda: gw.ready()["in_flight"] == 1, what="1 in flight")
            r = post(gw, LONG)
            assert r.status_code == 503 and r.json()["error"]["code"] == "queue_timeout"
            assert int(r.headers["retry-after"]) >= 1
            assert running.result().status_code == 200
    finally:
        gw.stop()


def test_killed_backend_leaves_rotation(pair) -> None:
    gw, a, _ = pair
    a.kill()
    results = [post(gw, {"model": "youtu-vl", "max_tokens": 3,
                         "messages": [{"role": "user", "content": f"q{i}"}]}) for i in range(10)]
    assert [r.status_code for r in results] == [200] * 10
    state = {x["name"]: x["state"] for x in gw.ready()["backends"]}
    assert state["a"] in ("down", "suspect") and state["b"] == "ready"
    metrics = httpx.get(gw.url + "/metrics").text
    assert 'vlgate_backend_state{backend="a",state="ready"} 0.0' in metrics


def test_loading_backend_gets_no_traffic(llama_server, tmp_path: Path) -> None:
    loading = FakeBackend(mode="loading").start()
    real = llama_server(slots=2, ctx=1024)
    gw = GatewayProcess({"backends": [{"url": loading.url, "name": "loading"}, {"url": real.url, "name": "real"}]},
                        tmp_path).start()
    try:
        ready = gw.wait_ready(backends=1)
        assert {x["name"]: x["state"] for x in ready["backends"]}["loading"] == "loading"
        for i in range(6):
            assert post(gw, {"model": "youtu-vl", "max_tokens": 2,
                             "messages": [{"role": "user", "content": f"x{i}"}]}).status_code == 200
        assert loading.chat_requests() == []
    finally:
        gw.stop()
        loading.stop()


def test_ready_503_when_no_backend(tmp_path: Path) -> None:
    loading = FakeBackend(mode="loading").start()
    gw = GatewayProcess({"backends": [{"url": loading.url}]}, tmp_path).start()
    try:
        time.sleep(0.3)
        r = httpx.get(gw.url + "/ready")
        assert r.status_code == 503
        assert "loading" in r.json()["reason"].lower()
    finally:
        gw.stop()
        loading.stop()
