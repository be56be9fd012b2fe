"""Chaos under load, frozen backends: real processes on loopback, steady load, nothing may be lost.

1. A real llama-server SIGSTOPped behind `vlgate serve` (3 backends): requests in flight on it end with an
   OpenAI-shaped error (streams: an error event after stream_idle_timeout_s; non-stream: 503 within
   request_timeout_s), new requests go to the live ones, it leaves rotation within one health period plus
   one health timeout, and comes back after SIGCONT.
2. A generation that stops making tokens while /health answers 200 (support/wedged.py): the watchdog takes
   the backend out within its window (stall_s plus its rounds), keeps it out while it is still wedged, and
   lets it back once it progresses again.
3. `vlgate up` restarting killed llama-servers under load: the vlgate process's RSS stays flat.

Measured times are printed (run with -s).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import httpx
import pytest
import yaml
from prometheus_client import CollectorRegistry

from support.chaos import post_chat, proper_error, stream_outcome
from support.clock import FakeClock
from support.gateway_process import GatewayProcess
from support.llama import LlamaServer, free_port
from support.procs import children_of
from support.wedged import WedgedBackend
from vlgate.backends import Backend, BackendState
from vlgate.config import WatchdogConfig
from vlgate.gateway.fleet.watchdog import SlotWatchdog
from vlgate.tinymodel.model import TinyModel

pytestmark = pytest.mark.slow

SLACK_S = 1.5  # a 2-core machine shared with other tests: scheduling noise on top of every configured window
GOOD = ("ok", "error event", "error 503")  # completed, or ended with an error the client can see


# ---------------------------------------------------------------------- load


@dataclass
class Outcome:
    kind: str  # "stream" | "plain"
    t0: float
    t1: float
    result: str  # one of GOOD, else what went wrong
    detail: str = ""


def judge(stream: bool, r: httpx.Response | None, raw: str) -> tuple[str, str]:
    """How a request ended, as a client sees it."""
    if r is None:
        return "lost", raw
    if r.status_code == 200 and stream:
        outcome = stream_outcome(raw)
        if outcome == "error event":
            err = json.loads([ln[6:] for ln in raw.split("\n") if ln.startswith("data: ")][-1])["error"]
            if not {"message", "type", "code"} <= set(err):
                return "malformed error event", raw[-300:]
            return outcome, str(err.get("code"))
        return outcome, raw[-300:] if outcome != "ok" else ""
    if r.status_code == 200:
        answer = json.loads(raw)
        complete = answer["choices"][0]["message"]["content"] is not None and "usage" in answer
        return ("ok", "") if complete else ("incomplete", raw[:300])
    if r.status_code in (429, 503) and proper_error(r, raw):
        return f"error {r.status_code}", str(json.loads(raw)["error"]["code"])
    return f"status {r.status_code}", f"{dict(r.headers)} {raw[:300]}"


class _Background:
    """A test's background thread (`_thread`, stopped by `_stop`) as a context manager, joined within JOIN_S."""

    JOIN_S = 5.0
    _thread: threading.Thread
    _stop: threading.Event

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(self.JOIN_S)
        assert not self._thread.is_alive(), f"{type(self).__name__} did not stop"


class SteadyLoad(_Background):
    """`workers` clients in a thread of their own, half streams, until stop(); bounded by `max_requests`."""

    JOIN_S = 60.0

    def __init__(self, url: str, workers: int = 6, max_tokens: int = 16, max_requests: int = 5000) -> None:
        self.url, self.workers, self.max_tokens, self.max_requests = url, workers, max_tokens, max_requests
        self.outcomes: list[Outcome] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self) -> None:
        async with httpx.AsyncClient(timeout=httpx.Timeout(30.0), limits=httpx.Limits(max_connections=64)) as c:
            await asyncio.gather(*(self._worker(c, w) for w in range(self.workers)))

    async def _worker(self, client: httpx.AsyncClient, w: int) -> None:
        i = 0
        while not self._stop.is_set() and len(self.outcomes) < self.max_requests:
            i += 1
            stream = (w + i) % 2 == 0
            body: dict[str, Any] = {"model": "youtu-vl", "max_tokens": self.max_tokens, "stream": stream,
                                    "messages": [{"role": "user", "content": f"worker {w} request {i}"}]}
            if stream:
                body["stream_options"] = {"include_usage": True}
            t0 = time.monotonic()
            r, raw = await post_chat(client, self.url, body)
            self.outcomes.append(Outcome("stream" if stream else "plain", t0, time.monotonic(), *judge(stream, r, raw)))


    def counts(self) -> dict[str, int]:
        return dict(sorted(Counter(f"{o.kind} {o.result}" for o in self.outcomes).items()))

    def bad(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.result not in GOOD]


class StateLog(_Background):
    """The gateway's view of one backend (its /ready), sampled every 50 ms in a thread."""

    def __init__(self, gw: GatewayProcess, name: str) -> None:
        self.gw, self.name = gw, name
        self.samples: list[tuple[float, str, str]] = []  # (when, state, reason)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=2) as client:
            while not self._stop.is_set():
                try:
                    backends = client.get(self.gw.url + "/ready", headers=self.gw.auth).json()["backends"]
                    b = next(b for b in backends if b["name"] == self.name)
                    self.samples.append((time.monotonic(), b["state"], b.get("reason") or ""))
                except (httpx.HTTPError, ValueError, KeyError, StopIteration):
                    pass
                self._stop.wait(0.05)

    def wait(self, ready: bool, since: float, timeout: float) -> tuple[float, str, str]:
        """The first sample after `since` that is (or is not) ready."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for sample in list(self.samples):
                if sample[0] >= since and (sample[1] == "ready") == ready:
                    return sample
            time.sleep(0.02)
        raise AssertionError(f"{self.name} not {'back in' if ready else 'out of'} rotation within {timeout}s: "
                             f"{self.samples[-5:]}")

    def ready_between(self, start: float, end: float) -> list[tuple[float, str, str]]:
        return [s for s in self.samples if start <= s[0] <= end and s[1] == "ready"]



def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def check_held_requests_failed_cleanly(load: SteadyLoad, held: set[str], out_t: float, frozen_at: float,
                                       request_timeout_s: float, idle_s: float) -> None:
    """The requests the frozen backend held ended with errors the client sees (an error event for a stream, a
    503 for a plain one); only those failed (none started after it left rotation), each within its bound."""
    counts = load.counts()
    assert "stream" not in held or counts.get("stream error event", 0) >= 1, counts
    assert "plain" not in held or counts.get("plain error 503", 0) >= 1, counts
    errors = [o for o in load.outcomes if o.result != "ok"]
    assert all(o.t0 <= out_t + 0.1 for o in errors), [o for o in errors if o.t0 > out_t + 0.1]
    check_errors_timed(load, frozen_at, request_timeout_s, idle_s)


def check_errors_timed(load: SteadyLoad, frozen_at: float, request_timeout_s: float, idle_s: float) -> None:
    """Each error came within its configured bound: a 503 within request_timeout_s of the request's start, an
    error event within stream_idle_timeout_s of the freeze (the stream's last byte came before it)."""
    for o in load.outcomes:
        if o.result == "error 503":
            assert o.t1 - o.t0 <= request_timeout_s + SLACK_S, o
        elif o.result == "error event":
            assert o.t1 - max(o.t0, frozen_at) <= idle_s + SLACK_S, o


# ---------------------------------------------------------------------- 1. SIGSTOP a real llama-server


def backend_slots(url: str) -> list[dict[str, Any]]:
    try:
        body = httpx.get(url + "/slots", timeout=1).json()
    except (httpx.HTTPError, ValueError):
        return []
    return body if isinstance(body, list) else []


def held_kinds(url: str, max_tokens: int) -> set[str]:
    """What a llama-server is generating now, far from done (a freeze right after the look still catches it):
    "stream" (a stream past its first token, so its headers went out), "plain" (a non-stream request)."""
    kinds = set()
    for s in backend_slots(url):
        if not s.get("is_processing"):
            continue
        params, next_token = s.get("params") or {}, s.get("next_token") or [{}]
        decoded = next_token[0].get("n_decoded", 0)
        if decoded > max_tokens // 3:
            continue
        if not params.get("stream"):
            kinds.add("plain")
        elif decoded > 0:
            kinds.add("stream")
    return kinds


def freeze_while_holding(server: LlamaServer, max_tokens: int, timeout: float = 5.0) -> set[str]:
    """SIGSTOP the server at a moment it holds a started stream and a non-stream request (or at least one
    of them, when `timeout` passes first); what it held."""
    deadline = time.monotonic() + timeout
    while True:
        kinds = held_kinds(server.url, max_tokens)
        if kinds == {"stream", "plain"} or (kinds and time.monotonic() > deadline):
            os.kill(server.pid, signal.SIGSTOP)
            return kinds
        assert time.monotonic() < deadline + timeout, "the victim never held a request"


def tokens_predicted(url: str) -> float:
    for line in httpx.get(url + "/metrics", timeout=5).text.splitlines():
        if line.startswith("llamacpp:tokens_predicted_total"):
            return float(line.split()[-1])
    raise AssertionError("llama-server /metrics has no llamacpp:tokens_predicted_total")


def test_a_sigstopped_llama_server_leaves_rotation_and_comes_back_under_load(
    llama_server: Callable[..., LlamaServer], tmp_path: Path
) -> None:
    servers = [llama_server(slots=2, ctx=2048) for _ in range(3)]
    victim = servers[0]
    health = {"interval_s": 0.5, "timeout_s": 0.5}
    request_timeout_s, idle_s, max_tokens = 5.0, 3.0, 400
    gw = GatewayProcess({
        "backends": [{"url": s.url, "name": f"b{i}"} for i, s in enumerate(servers)],
        "gateway": {"request_timeout_s": request_timeout_s, "stream_idle_timeout_s": idle_s, "health": health,
                    "retry": {"first_byte_timeout_s": 3},
                    "watchdog": {"stall_s": 2, "slots_timeout_s": 0.5, "slots_timeouts": 2},
                    "queue": {"timeout_s": 10}},
    }, tmp_path).start()
    # out of rotation: the next health round (interval_s away at most) times out after timeout_s
    out_window = health["interval_s"] + health["timeout_s"]
    # back: a backend out of rotation is polled every min(interval_s, 0.5 s); the probe answers at once
    back_window = min(health["interval_s"], 0.5) + health["timeout_s"]
    stopped = False
    try:
        gw.wait_ready(backends=3)
        # long answers (the tiny model makes ~2000 tokens/s): the victim is caught mid-answer
        with StateLog(gw, "b0") as states, SteadyLoad(gw.url, workers=6, max_tokens=max_tokens) as load:
            time.sleep(2.0)  # warm-up: every backend busy
            held = freeze_while_holding(victim, max_tokens)
            stopped, frozen_at = True, time.monotonic()
            out_t, out_state, out_reason = states.wait(ready=False, since=frozen_at, timeout=15)
            # frozen until every request it held has ended (with an error) and the next ones went elsewhere
            time.sleep(max(0.0, frozen_at + max(request_timeout_s, idle_s) + 1.0 - time.monotonic()))
            served_before = len([o for o in load.outcomes if o.result == "ok"])
            os.kill(victim.pid, signal.SIGCONT)
            stopped, cont_at = False, time.monotonic()
            back_t, _, _ = states.wait(ready=True, since=cont_at, timeout=15)
            predicted = tokens_predicted(victim.url)
            time.sleep(2.0)  # load after its return: it serves again
            predicted_after = tokens_predicted(victim.url)
        out_s, back_s = out_t - frozen_at, back_t - cont_at
        print(f"\nSIGSTOP: out of rotation after {out_s:.2f}s ({out_state}: {out_reason}; window "
              f"{out_window:g}s = health interval_s + timeout_s), back {back_s:.2f}s after SIGCONT (window "
              f"{back_window:g}s); held when frozen: {sorted(held)}; requests: {load.counts()}")
        assert load.bad() == [], f"{load.bad()[:5]}\n{load.counts()}"
        assert out_s <= out_window + SLACK_S and back_s <= back_window + SLACK_S
        # the requests it held when frozen ended with errors the client sees, each within its own timeout
        check_held_requests_failed_cleanly(load, held, out_t, frozen_at, request_timeout_s, idle_s)
        # new work went to the live backends meanwhile, and to the victim again after its return
        assert len([o for o in load.outcomes if o.result == "ok" and out_t < o.t0 and o.t1 < cont_at]) > 0
        assert served_before > 0 and predicted_after > predicted
        assert "Traceback" not in gw.log() and "Internal gateway error" not in gw.log()
    finally:
        if stopped:
            os.kill(victim.pid, signal.SIGCONT)
        gw.stop()


# ---------------------------------------------------------------------- 2. a wedged generation, /health 200


def test_a_wedged_generation_is_taken_out_by_the_watchdog_and_back_once_it_progresses(tmp_path: Path) -> None:
    backends = [WedgedBackend(tokens=20, token_s=0.02).start() for _ in range(3)]
    wedgy = backends[0]
    stall_s, request_timeout_s, idle_s = 1.0, 3.0, 3.0
    health = {"interval_s": 0.5, "timeout_s": 0.5}
    gw = GatewayProcess({
        "backends": [{"url": b.url, "name": f"w{i}"} for i, b in enumerate(backends)],
        "gateway": {"request_timeout_s": request_timeout_s, "stream_idle_timeout_s": idle_s, "health": health,
                    "retry": {"first_byte_timeout_s": 2},
                    "watchdog": {"stall_s": stall_s, "slots_timeout_s": 0.5}, "queue": {"timeout_s": 10}},
    }, tmp_path).start()
    # out: a round every stall_s/4 sees the stuck slot first, and stall_s later calls it wedged
    out_window = stall_s + 2 * stall_s / 4
    # back: the watchdog's next round sees progress, then the next health poll (every <= 0.5 s) lets it in
    back_window = stall_s / 4 + min(health["interval_s"], 0.5) + health["timeout_s"]
    try:
        gw.wait_ready(backends=3)
        with StateLog(gw, "w0") as states, SteadyLoad(gw.url, workers=6, max_tokens=6) as load:
            time.sleep(1.0)
            deadline = time.monotonic() + 5
            while not (wedgy.holding() == {"stream", "plain"} or (wedgy.holding() and time.monotonic() > deadline)):
                assert time.monotonic() < deadline + 5, "the wedged backend never held a request"
                time.sleep(0.002)
            wedgy.frozen = True
            frozen_at = time.monotonic()
            # what it holds once frozen: a generation already past its last token when the flag flipped (in
            # another thread) completes normally, so it is not counted as held
            time.sleep(0.2)
            held = wedgy.holding()
            assert held, "nothing was left on the wedged backend once frozen"
            out_t, out_state, out_reason = states.wait(ready=False, since=frozen_at, timeout=10)
            time.sleep(max(0.0, frozen_at + max(request_timeout_s, idle_s) + 1.0 - time.monotonic()))
            wedgy.frozen = False
            thawed_at = time.monotonic()
            back_t, _, _ = states.wait(ready=True, since=thawed_at, timeout=10)
            completed = wedgy.completed
            time.sleep(1.5)
        out_s, back_s = out_t - frozen_at, back_t - thawed_at
        flaps = states.ready_between(out_t, thawed_at)
        print(f"\nwedged: out of rotation after {out_s:.2f}s ({out_state}: {out_reason}; window {out_window:g}s "
              f"= stall_s + 2 watchdog rounds), back {back_s:.2f}s after it progressed (window {back_window:g}s); "
              f"in rotation while wedged: {len(flaps)} samples; held when frozen: {sorted(held)}; "
              f"requests: {load.counts()}")
        assert load.bad() == [], f"{load.bad()[:5]}\n{load.counts()}"
        assert out_state == "suspect" and out_reason.startswith("wedged: slot"), out_reason
        assert out_s <= out_window + SLACK_S and back_s <= back_window + SLACK_S
        assert flaps == [], "a backend still wedged came back into rotation"
        check_held_requests_failed_cleanly(load, held, out_t, frozen_at, request_timeout_s, idle_s)
        assert wedgy.completed > completed, "no work reached it after its return"
        assert "Traceback" not in gw.log() and "Internal gateway error" not in gw.log()
    finally:
        wedgy.frozen = False
        gw.stop()
        for b in backends:
            b.stop()


# ---------------------------------------------------------------------- 3. RSS across restarts under `vlgate up`


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def llama_children(pid: int) -> list[int]:
    found = []
    for child in children_of(pid):
        try:
            if b"llama-server" in Path(f"/proc/{child}/cmdline").read_bytes():
                found.append(child)
        except OSError:
            pass
    return sorted(found)


@pytest.fixture
def vlgate_up(tmp_path: Path) -> Iterator[Callable[[dict[str, Any]], subprocess.Popen[bytes]]]:
    """Start `vlgate up` with a config; at teardown it is stopped and no llama-server it ran may outlive it."""
    started: list[subprocess.Popen[bytes]] = []

    def start(config: dict[str, Any]) -> subprocess.Popen[bytes]:
        path = tmp_path / "up.yaml"
        path.write_text(yaml.safe_dump(config))
        with open(tmp_path / "vlgate-up.log", "wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "vlgate.cli", "up", "--config", str(path)], stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        seen = set(llama_children(proc.pid))
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in seen):
            time.sleep(0.05)
        alive = [p for p in seen if Path(f"/proc/{p}/stat").exists()
                 and Path(f"/proc/{p}/stat").read_text().rsplit(") ", 1)[1][0] != "Z"]
        assert alive == [], f"llama-server processes outlived vlgate: {alive}"


def test_gateway_rss_stays_flat_across_backend_restarts_under_load(
    vlgate_up: Callable[[dict[str, Any]], subprocess.Popen[bytes]], llama_server_bin: Path, tiny_model: TinyModel,
    tmp_path: Path,
) -> None:
    warmup, kills, bound_mb = 3, 10, 20.0
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = vlgate_up({
        "gateway": {"port": port, "drain_grace_s": 5, "drain_delay_s": 0, "queue": {"timeout_s": 10}},
        "launcher": {
            "server_binary": str(llama_server_bin),
            "model": {"path": str(tiny_model.model), "mmproj": str(tiny_model.mmproj)},
            "gpus": [], "cpu_backends": 2, "parallel": 2, "threads": 1, "n_predict": 32, "port_base": 0,
            "log_dir": str(tmp_path / "logs"), "stop_timeout_s": 5,
            "restart": {"backoff_initial_s": 0.1, "backoff_max_s": 0.5, "backoff_jitter_s": 0.05,
                        "crash_loop_count": 1000},
        },
    })

    def both_ready() -> bool:
        assert proc.poll() is None, (tmp_path / "vlgate-up.log").read_text()[-3000:]
        try:
            body = httpx.get(url + "/ready", timeout=2).json()
        except (httpx.HTTPError, ValueError):
            return False
        return sum(b["state"] == "ready" for b in body.get("backends", [])) == 2 and len(llama_children(proc.pid)) == 2

    def kill_one(i: int) -> float:
        """SIGKILL one llama-server; the seconds until the launcher has it back and the gateway uses it."""
        pids = llama_children(proc.pid)
        victim = pids[i % len(pids)]
        t = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: victim not in llama_children(proc.pid), 10, "the killed llama-server to be reaped")
        wait_for(both_ready, 30, "the restarted llama-server to be ready")
        return time.monotonic() - t

    wait_for(both_ready, 60, "vlgate up to be ready")
    samples: list[float] = []
    restarts: list[float] = []
    with SteadyLoad(url, workers=4, max_tokens=16) as load:
        for i in range(warmup):  # first restarts allocate what later ones reuse (pools, metrics children)
            restarts.append(kill_one(i))
        time.sleep(0.5)
        samples.append(rss_mb(proc.pid))
        for i in range(kills):
            restarts.append(kill_one(i))
            time.sleep(0.3)
            samples.append(rss_mb(proc.pid))
    growth = samples[-1] - samples[0]
    print(f"\nRSS of vlgate up (MB) after warm-up ({warmup} restarts) and after each of {kills} more: "
          f"{' '.join(f'{s:.1f}' for s in samples)}; growth {growth:+.1f} MB "
          f"({growth * 1024 / kills:+.0f} KB per restart, max {max(samples) - samples[0]:+.1f} MB); "
          f"restart to ready: {min(restarts):.2f}-{max(restarts):.2f}s; requests: {load.counts()}")
    assert load.bad() == [], f"{load.bad()[:5]}\n{load.counts()}"
    assert max(samples) - samples[0] < bound_mb
    assert len([o for o in load.outcomes if o.result == "ok"]) > 0
    log = (tmp_path / "vlgate-up.log").read_text(errors="replace")
    assert "Traceback" not in log and "Internal gateway error" not in log, log[-3000:]


# ---------------------------------------------------------------------- the watchdog's hold, in process


def test_an_ejected_wedged_backend_stays_out_until_its_stuck_slot_moves() -> None:
    """The unit behind scenario 2: under `serve` the ejection goes on while /slots shows the same stuck slot."""
    clock = FakeClock()
    wd = SlotWatchdog(lambda: [], WatchdogConfig(stall_s=10), CollectorRegistry(), clock)
    b = Backend(url="http://w", name="w")
    b.set_state(BackendState.READY)
    stuck = [{"id": 0, "is_processing": True, "id_task": 3, "n_prompt_tokens_processed": 9,
              "next_token": [{"n_decoded": 4}]}]
    answer: list[Any] = [stuck]

    def slots(request: httpx.Request) -> httpx.Response:
        if answer[0] is None:
            raise httpx.ReadTimeout("hangs", request=request)
        return httpx.Response(200, json=answer[0])

    async def run() -> None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(slots)) as client:
            await wd.check(client, b)
            clock.now += 11
            await wd.check(client, b)
            assert b.state is BackendState.SUSPECT and b.ejected_until == clock.now + 10
            for still in (stuck, None, stuck, None):  # the same stuck slot, or /slots hanging: out, however long
                clock.now += 30
                answer[0] = still
                await wd.recheck(client, b)
                assert b.ejected_until > clock.now
            answer[0] = [{**stuck[0], "next_token": [{"n_decoded": 5}]}]  # it moves: the ejection ends now
            await wd.recheck(client, b)
            assert b.ejected_until <= clock.now and "w" not in wd._held

    asyncio.run(run())
