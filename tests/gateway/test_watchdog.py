"""The wedged-generation watchdog: a slot busy without progress, or /slots hanging, while /health says 200."""

from __future__ import annotations

import time

import httpx
from prometheus_client import CollectorRegistry

from support.clock import FakeClock
from support.fakebackend import FakeBackend
from support.gateway_process import GatewayProcess
from vlgate.backends import Backend
from vlgate.config import WatchdogConfig
from vlgate.gateway.fleet.watchdog import SlotWatchdog


def slot(task: int, decoded: int, processed: int = 10, processing: bool = True) -> dict:
    return {"id": 0, "is_processing": processing, "id_task": task, "n_prompt_tokens_processed": processed,
            "next_token": [{"n_decoded": decoded}]}


def test_a_slot_without_progress_for_stall_s_is_wedged() -> None:
    clock = FakeClock()
    wd = SlotWatchdog(lambda: [], WatchdogConfig(stall_s=10), CollectorRegistry(), clock)
    b = Backend(url="http://x", name="x")
    assert wd.observe(b, [slot(1, 5)]) is None
    clock.now += 9
    assert wd.observe(b, [slot(1, 5)]) is None
    clock.now += 2
    reason = wd.observe(b, [slot(1, 5)])
    assert reason is not None and "slot 0 processing with no progress for 11s" in reason
    # progress (a token, a prompt batch, another task) or an idle slot resets the clock
    for moved in (slot(1, 6), slot(1, 6, processed=20), slot(2, 6, processed=20)):
        clock.now += 11
        assert wd.observe(b, [moved]) is None
    clock.now += 100
    assert wd.observe(b, [slot(2, 6, processing=False)]) is None
    assert wd.observe(b, [slot(2, 6, processed=20)]) is None


def test_slots_timing_out_in_a_row_is_wedged() -> None:
    wd = SlotWatchdog(lambda: [], WatchdogConfig(slots_timeouts=3), CollectorRegistry())
    b = Backend(url="http://x", name="x")
    assert wd.timed_out(b) is None and wd.timed_out(b) is None
    wd.observe(b, [])  # an answer in between starts the count over
    assert wd.timed_out(b) is None and wd.timed_out(b) is None
    assert "did not answer within 10s, 3 times in a row" in (wd.timed_out(b) or "")


def test_a_wedged_backend_is_reported_and_ejected_under_serve(tmp_path) -> None:
    wedged, healthy = FakeBackend(wedged=True).start(), FakeBackend().start()
    gw = GatewayProcess({"backends": [{"url": wedged.url, "name": "wedged"}, {"url": healthy.url, "name": "ok"}],
                         "gateway": {"watchdog": {"stall_s": 0.8}}}, tmp_path).start()
    try:
        gw.wait_ready(backends=2)
        deadline = time.monotonic() + 10
        state = {}
        while time.monotonic() < deadline:
            state = {b["name"]: b for b in gw.ready()["backends"]}
            if state["wedged"]["state"] != "ready":
                break
            time.sleep(0.1)
        assert state["wedged"]["state"] == "suspect", state
        assert state["wedged"]["reason"].startswith("wedged: slot 0 processing with no progress")
        assert state["ok"]["state"] == "ready"
        assert httpx.get(gw.url + "/ready").status_code == 200
        assert 'vlgate_wedged_total{backend="wedged"}' in httpx.get(gw.url + "/metrics").text
        assert "wedged: slot 0" in gw.log() and "ejected for 0.8s" in gw.log()
        wedged.wedged = False  # it recovers: after the ejection, health checks bring it back
        gw.wait_ready(backends=2, timeout=10)
    finally:
        gw.stop()
        wedged.stop()
        healthy.stop()
