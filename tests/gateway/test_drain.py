"""SIGTERM drains the way load balancers understand: `/ready` answers 503 (never "connection refused")
while streams run and for at least drain_delay_s, new API requests get 503 `draining`, then exit 0."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from support.gateway_process import GatewayProcess
from support.llama import free_port
from support.wait import wait_until

# a client thread on a loaded 2-core machine reads [DONE] up to ~1 s late (CI saw > 0.3 s); the streams drain ~8 s
LAG_S = 1.5
STREAMS = 4  # on one slot: one runs, the others queue, so work goes on for a while after the signal


def probe(url: str) -> int | str:
    try:
        return httpx.get(url + "/ready", timeout=2).status_code
    except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError):  # refused, or accepted as it closed
        return "refused"


def watch_until_exit(gw: GatewayProcess, timeout: float = 60) -> list[tuple[float, int | str]]:
    """(time, /ready answer) every 20 ms until the process has exited."""
    assert gw.proc is not None
    seen = []
    deadline = time.monotonic() + timeout
    while gw.proc.poll() is None and time.monotonic() < deadline:
        seen.append((time.monotonic(), probe(gw.url)))
        time.sleep(0.02)
    return seen


@pytest.mark.parametrize(("sig", "delay_wanted"), [(signal.SIGTERM, True), (signal.SIGINT, False)])
def test_idle_drain_keeps_answering_503_for_the_delay(tmp_path: Path, sig: int, delay_wanted: bool) -> None:
    dead_backend = f"http://127.0.0.1:{free_port()}"  # nothing to serve: the drain is about the listener
    gw = GatewayProcess({"backends": [{"url": dead_backend}], "gateway": {"drain_delay_s": 1.5}}, tmp_path).start()
    try:
        assert gw.proc is not None
        t_sig = time.monotonic()
        gw.proc.send_signal(sig)
        if delay_wanted:  # (the signal arrives a moment after it is sent)
            wait_until(lambda: httpx.get(gw.url + "/ready", timeout=2).json()["draining"], 2, "draining")
        seen = watch_until_exit(gw)
        exited = time.monotonic() - t_sig
        assert gw.proc.wait(10) == 0
        assert [s for _, s in seen if s not in (503, "refused")] == []
        # the listener closed before the first refusal (or the exit, when no probe fell in between)
        closed = next((t - t_sig for t, s in seen if s == "refused"), exited)
        if delay_wanted:  # SIGTERM: a balancer polling readiness has drain_delay_s to see the 503
            assert closed >= 1.45
            print(f"\n[drain] idle SIGTERM: /ready 503 until {closed:.2f}s (drain_delay_s 1.5), "
                  f"exit 0 at {exited:.2f}s")
        else:  # Ctrl-C: nobody's balancer is watching
            assert closed < 1.0
    finally:
        gw.stop()


def test_a_second_signal_closes_at_once(tmp_path: Path) -> None:
    gw = GatewayProcess({"backends": [{"url": f"http://127.0.0.1:{free_port()}"}], "gateway": {"drain_delay_s": 30}},
                        tmp_path).start()
    try:
        assert gw.proc is not None
        gw.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: httpx.get(gw.url + "/ready", timeout=2).json()["draining"], 2, "draining (for 30 s)")
        t_second = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)
        assert gw.proc.wait(10) == 0 and time.monotonic() - t_second < 5
        assert probe(gw.url) == "refused"
    finally:
        gw.stop()


@pytest.mark.slow
def test_sigterm_with_streams_in_flight(llama_server, tmp_path: Path) -> None:
    server = llama_server(slots=1, ctx=2048)
    gw = GatewayProcess({"backends": [{"url": server.url}], "gateway": {"drain_delay_s": 0.5, "drain_grace_s": 60}},
                        tmp_path).start()
    try:
        gw.wait_ready()
        ends: dict[int, tuple[float, bool]] = {}
        body = {"model": "youtu-vl", "max_tokens": 2000, "stream": True,
                "messages": [{"role": "user", "content": "a long story"}]}

        def stream(i: int) -> None:
            with httpx.stream("POST", gw.url + "/v1/chat/completions", json=body, timeout=120) as r:
                lines = list(r.iter_lines())
                done_at = time.monotonic()  # the [DONE] line was the last one read
            tail = [x for x in lines if x][-1:]
            ends[i] = (done_at, r.status_code == 200 and tail == ["data: [DONE]"])
            if not ends[i][1]:
                print(f"stream {i}: {r.status_code} {lines[-3:]}\n{gw.log()}")

        threads = [threading.Thread(target=stream, args=(i,)) for i in range(STREAMS)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 20
        # one slot: one runs, all the others wait (each admitted before the signal: a later one gets 503 draining)
        while not ((r := gw.ready())["in_flight"] == 1 and r["queued"] == STREAMS - 1):
            assert time.monotonic() < deadline, r
            time.sleep(0.01)
        assert gw.proc is not None
        t_term = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: probe(gw.url) == 503 and gw.ready()["draining"], 2, "draining")
        late = httpx.post(gw.url + "/v1/chat/completions", json={**body, "stream": False}, timeout=10)
        assert late.status_code == 503 and late.json()["error"]["code"] == "draining"
        assert late.headers["retry-after"] == "1" and late.headers["x-should-retry"] == "true"
        assert late.headers["connection"] == "close"  # the client's retry opens a connection the balancer places
        seen = watch_until_exit(gw)
        t_exit = time.monotonic()
        for t in threads:
            t.join(60)
        assert gw.proc.wait(10) == 0
        assert sorted(ends) == list(range(STREAMS)) and all(ok for _, ok in ends.values())  # all finished whole
        last_end = max(t for t, _ in ends.values())
        assert last_end > t_term + LAG_S + 1.0  # they really ran during the drain, longer than the lag allowed
        # answered, never refused, while the streams ran (the client reads [DONE] a moment after it was sent,
        # and the listener may close right then: allow the client that much lag, far less than the drain)
        before_end = [s for t, s in seen if t < last_end - LAG_S]
        assert before_end and set(before_end) == {503}, (
            [(round(t - t_term, 3), s) for t, s in seen], {i: round(t - t_term, 3) for i, (t, _) in ends.items()})
        answers = [s for _, s in seen]
        assert "refused" not in answers or 503 not in answers[answers.index("refused"):]  # closed once, for good
        print(f"\n[drain] SIGTERM with {STREAMS} streams (1 running, {r['queued']} queued): "
              f"streams ended {last_end - t_term:.2f}s after the signal; "
              f"/ready 503 on all {len(before_end)} probes until then; listener closed and exit 0 "
              f"{t_exit - last_end:.2f}s after the last stream")
    finally:
        gw.stop()


# every declared API route drains, aliases and utilities included (the endpoint applies each route's `drains`)
LATE_REQUESTS = [
    ("/chat/completions", {"model": "youtu-vl", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}),
    ("/responses", {"model": "youtu-vl", "max_output_tokens": 4, "input": "hi"}),
    ("/tokenize", {"content": "hello"}),
    ("/detokenize", {"tokens": [1, 2]}),
    ("/apply-template", {"messages": [{"role": "user", "content": "hi"}]}),
    ("/v1/messages", {"model": "youtu-vl", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}),
]


@pytest.mark.slow
def test_aliases_drain_like_v1(llama_server, tmp_path: Path) -> None:
    """Streams on the `/chat/completions` alias are waited for (they end with [DONE], not cut), and new
    requests on the aliases and utility routes are refused with 503 `draining`, as on `/v1/...`."""
    server = llama_server(slots=1, ctx=2048)
    gw = GatewayProcess({"backends": [{"url": server.url}], "gateway": {"drain_delay_s": 0.2, "drain_grace_s": 60}},
                        tmp_path).start()
    try:
        gw.wait_ready()
        tails: dict[int, tuple[int, list[str]]] = {}
        body = {"model": "youtu-vl", "max_tokens": 2000, "stream": True,
                "messages": [{"role": "user", "content": "a long story"}]}

        def stream(i: int) -> None:
            with httpx.stream("POST", gw.url + "/chat/completions", json=body, timeout=120) as r:
                lines = [x for x in r.iter_lines() if x]
            tails[i] = (r.status_code, lines[-1:])

        threads = [threading.Thread(target=stream, args=(i,)) for i in range(STREAMS)]
        for t in threads:
            t.start()
        wait_until(lambda: (r := gw.ready())["in_flight"] == 1 and r["queued"] == STREAMS - 1, 20, "alias streams")
        assert gw.proc is not None
        gw.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: probe(gw.url) == 503, 2, "draining")
        for path, late in LATE_REQUESTS:
            r = httpx.post(gw.url + path, json=late, timeout=10)
            assert r.status_code == 503, (path, r.status_code, r.text)
            err = r.json()["error"]
            kind = err["type"] if path == "/v1/messages" else err["code"]
            assert kind in ("draining", "overloaded_error"), (path, r.text)
            assert r.headers["retry-after"] == "1"
        for t in threads:
            t.join(90)
        assert tails == {i: (200, ["data: [DONE]"]) for i in range(STREAMS)}  # counted, waited for, whole
        assert gw.proc.wait(20) == 0
    finally:
        gw.stop()
