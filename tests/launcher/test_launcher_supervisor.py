"""The supervisor with real llama-server processes (tiny model, CPU) and fake binaries that misbehave.

Every test ends by proving, PID by PID, that no process it started survives.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from vlgate.backends import Backend, BackendState
from vlgate.launcher.command import BackendSpec, build_specs
from vlgate.launcher.download import ModelFiles
from vlgate.launcher.settings import LauncherSettings
from vlgate.launcher.supervisor import Supervisor
from vlgate.tinymodel.model import TinyModel

S = BackendState
pytestmark = pytest.mark.slow


def settings(**over: object) -> LauncherSettings:
    base = {
        "gpus": [], "cpu_backends": 2, "parallel": 2, "threads": 1, "n_predict": 32, "port_base": 0,
        "stop_timeout_s": 5, "load_timeout_s": 30,
        "restart": {"backoff_initial_s": 0.3, "backoff_max_s": 2, "backoff_jitter_s": 0.2,
                    "crash_loop_count": 3, "crash_loop_window_s": 60},
    }
    return LauncherSettings.model_validate({**base, **over})


def plan(s: LauncherSettings, binary: Path, model: ModelFiles, tmp_path: Path) -> list[BackendSpec]:
    return build_specs(s, binary=binary, model=model, gpus=[], alias="tiny", log_dir=tmp_path / "logs")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except OSError:
        return False


def assert_all_gone(pids: list[int], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.05)
    assert [p for p in pids if alive(p)] == [], "processes survived"


def one_backend(s: LauncherSettings, binary: Path, model: ModelFiles, tmp_path: Path):
    """A supervisor of one backend, and the record of that backend's state changes."""
    sup = Supervisor(plan(s, binary, model, tmp_path), s)
    (proc,) = sup.processes
    return sup, proc, history_of(proc.backend)


def history_of(backend: Backend) -> list[tuple[float, BackendState, str]]:
    seen: list[tuple[float, BackendState, str]] = []
    backend.listeners.append(lambda b: seen.append((time.monotonic(), b.state, b.reason)))
    return seen


async def wait_for(pred: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def fake_binary(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "fake-llama-server"
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(0o755)
    return path


@pytest.fixture
def model(tiny_model: TinyModel) -> ModelFiles:
    return ModelFiles(tiny_model.model, tiny_model.mmproj)


def test_two_backends_ready_then_a_killed_one_restarts_with_backoff(
    llama_server_bin: Path, model: ModelFiles, tmp_path: Path
) -> None:
    s = settings()
    sup = Supervisor(plan(s, llama_server_bin, model, tmp_path), s)
    first, second = sup.processes
    h0, h1 = history_of(first.backend), history_of(second.backend)

    async def scenario() -> tuple[float, float]:
        sup.start()
        await wait_for(lambda: all(b.state is S.READY for b in sup.backends), 30, "both ready")
        old_pid = first.pid
        assert old_pid is not None
        t_kill = time.monotonic()
        os.kill(old_pid, 9)
        await wait_for(lambda: first.backend.state is S.READY and first.pid != old_pid, 30, "restart")
        back = time.monotonic() - t_kill
        await sup.stop()
        return t_kill, back

    t_kill, back = asyncio.run(scenario())
    states0 = [st for _, st, _ in h0]
    assert states0[0] in (S.LOADING, S.READY) and S.READY in states0
    after = [(t, st, why) for t, st, why in h0 if t >= t_kill]
    assert [st for _, st, _ in after if st is not S.LOADING] == [
        S.CRASHED, S.RESTARTING, S.STARTING, S.READY, S.DRAINING, S.STOPPED]
    crashed_reason = after[0][2]
    assert crashed_reason.startswith("killed by SIGKILL: ") and "llama_server" in crashed_reason
    (delay,) = sup.delays[first.spec.name]
    assert 0.3 <= delay <= 0.5  # initial 0.3 s + jitter up to 0.2 s
    restarting_at = after[1][0]
    starting_at = after[2][0]
    assert delay - 0.02 <= starting_at - restarting_at <= delay + 0.25
    assert after[1][2].startswith(f"restart 1 in {delay:.2f}s after: killed by SIGKILL")
    assert back < delay + 5
    # the other backend never left READY while its neighbour crashed
    assert [st for t, st, _ in h1 if t >= t_kill] == [S.DRAINING, S.STOPPED]
    log = first.spec.log_path.read_text()
    assert log.count("[vlgate] start cpu0:") == 2 and "killed by SIGKILL" in log and "llama_server: model loaded" in log
    assert_all_gone(first.pids + second.pids)
    assert len(first.pids) == 2 and len(second.pids) == 1


SLOW_LOADER = """#!{python}
# Answers /health with 503 "Loading model" for {load_s} s (a big model loading), then becomes the real server.
import http.server, os, sys, threading, time
args = sys.argv[1:]
port = int(args[args.index("--port") + 1])

class Loading(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b'{{"error":{{"code":503,"message":"Loading model","type":"unavailable_error"}}}}'
        self.send_response(503)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass

srv = http.server.HTTPServer(("127.0.0.1", port), Loading)
threading.Thread(target=srv.serve_forever, daemon=True).start()
print("fake: loading model", flush=True)
time.sleep({load_s})
srv.shutdown()
srv.server_close()
os.execv({real!r}, [{real!r}] + args)
"""


def test_sigkill_mid_load_restarts_and_loads_again(llama_server_bin: Path, model: ModelFiles, tmp_path: Path) -> None:
    import sys

    loader = tmp_path / "slow-loader"
    loader.write_text(SLOW_LOADER.format(python=sys.executable, load_s=1.0, real=str(llama_server_bin)))
    loader.chmod(0o755)
    s = settings(cpu_backends=1)
    sup, proc, history = one_backend(s, loader, model, tmp_path)

    async def scenario() -> None:
        sup.start()
        await wait_for(lambda: proc.backend.state is S.LOADING, 20, "loading")
        os.kill(proc.pid, 9)  # type: ignore[arg-type]
        await wait_for(lambda: proc.backend.state is S.READY, 30, "ready after the restart")
        await sup.stop()

    asyncio.run(scenario())
    assert [st for _, st, _ in history] == [
        S.LOADING, S.CRASHED, S.RESTARTING, S.STARTING, S.LOADING, S.READY, S.DRAINING, S.STOPPED]
    crashed = next(why for _, st, why in history if st is S.CRASHED)
    assert crashed == "killed by SIGKILL: fake: loading model"
    assert len(proc.pids) == 2
    assert_all_gone(proc.pids)


def test_crash_at_start_every_time_is_parked_with_its_last_lines(tmp_path: Path, model: ModelFiles) -> None:
    binary = fake_binary(tmp_path, 'echo "loading $2"; echo "fake llama-server: cannot open model" >&2; exit 1\n')
    s = settings(cpu_backends=1)
    sup, proc, history = one_backend(s, binary, model, tmp_path)

    async def scenario() -> None:
        sup.start()
        await wait_for(lambda: proc.backend.state is S.FAILED, 20, "parked")
        await asyncio.sleep(0.5)  # and it stays parked: no further start
        await sup.stop()

    t0 = time.monotonic()
    asyncio.run(scenario())
    assert len(proc.pids) == 3  # crash_loop_count
    reason = proc.backend.reason
    assert reason == (f"crash loop (3 crashes in 60s), parked for 300s (or until un-parked); last: exited with code 1: "
                      f"loading {model.model} | "
                      "fake llama-server: cannot open model")
    assert proc.backend.state is S.FAILED  # stop() leaves a parked backend visible as failed
    d1, d2 = sup.delays[proc.spec.name]
    assert 0.3 <= d1 <= 0.5 and 0.6 <= d2 <= 0.8  # exponential: 0.3 * 2^(n-1) + jitter
    restarts = [t for t, st, _ in history if st is S.RESTARTING]
    starts = [t for t, st, _ in history if st is S.STARTING]
    assert len(restarts) == 2 and len(starts) == 2
    assert starts[0] - restarts[0] == pytest.approx(d1, abs=0.1)
    assert starts[1] - restarts[1] == pytest.approx(d2, abs=0.1)
    assert time.monotonic() - t0 < 10
    assert_all_gone(proc.pids)


def test_a_parked_backend_is_tried_again_after_its_cool_down_or_when_un_parked(tmp_path: Path,
                                                                                 model: ModelFiles) -> None:
    """Not gone for good (Kubernetes' CrashLoopBackOff): a long, doubling cool-down, or an operator's call."""
    binary = fake_binary(tmp_path, "exit 1\n")
    s = settings(cpu_backends=1, restart={"backoff_initial_s": 0.05, "backoff_max_s": 0.1, "backoff_jitter_s": 0.01,
                                          "crash_loop_count": 2, "crash_loop_window_s": 60,
                                          "parked_cooldown_s": 0.5, "parked_cooldown_max_s": 0.8})
    sup, proc, history = one_backend(s, binary, model, tmp_path)
    parks: list[float] = []

    async def scenario() -> None:
        sup.start()
        for n in (1, 2, 3):  # parked, cool-down, tried again (2 more crashes), parked longer ...
            await wait_for(lambda n=n: sum(st is S.FAILED for _, st, _ in history) >= n, 10, f"park {n}")
            parks.append(time.monotonic())
        assert "parked for 0.8s" in proc.backend.reason  # 0.5, then doubled, capped at 0.8
        assert proc.backend.unpark is not None
        assert proc.backend.unpark()  # an operator: now, not after the cool-down
        await wait_for(lambda: sum(st is S.FAILED for _, st, _ in history) >= 4, 10, "park 4")
        await sup.stop()

    asyncio.run(scenario())
    assert 0.8 <= parks[2] - parks[1] < 2.0
    restarts = [r for _, st, r in history if st is S.RESTARTING]
    assert "trying again after a 0.5s park" in restarts and "un-parked by an operator" in restarts
    assert len(proc.pids) == 8  # 2 crashes per round, 4 rounds
    assert_all_gone(proc.pids)


def test_load_timeout_kills_the_whole_process_group(tmp_path: Path, model: ModelFiles) -> None:
    # never answers /health; its child `sleep` must die with it
    binary = fake_binary(tmp_path, 'sleep 300 &\necho "child $!"\nwait\n')
    s = settings(cpu_backends=1, load_timeout_s=0.6, restart={"crash_loop_count": 1})
    sup = Supervisor(plan(s, binary, model, tmp_path), s)
    (proc,) = sup.processes

    async def scenario() -> None:
        sup.start()
        await wait_for(lambda: proc.backend.state is S.FAILED, 10, "parked")
        await sup.stop()

    asyncio.run(scenario())
    assert "not ready after 0.6s" in proc.backend.reason and "killed by SIGKILL" in proc.backend.reason
    child = int(next(ln for ln in proc.tail if ln.startswith("child ")).split()[1])
    assert_all_gone([*proc.pids, child])


def test_stop_escalates_to_sigkill_after_the_timeout(tmp_path: Path, model: ModelFiles) -> None:
    # ignores SIGTERM (and so does its child: an ignored signal stays ignored across exec)
    binary = fake_binary(tmp_path, "trap '' TERM\nsleep 300 &\necho \"child $!\"\nwait\n")
    s = settings(cpu_backends=1, stop_timeout_s=0.8)
    sup = Supervisor(plan(s, binary, model, tmp_path), s)
    (proc,) = sup.processes

    async def scenario() -> float:
        sup.start()
        await wait_for(lambda: proc.alive, 10, "spawned")
        await asyncio.sleep(0.5)
        t0 = time.monotonic()
        await sup.stop()
        return time.monotonic() - t0

    took = asyncio.run(scenario())
    assert 0.8 <= took < 2.5
    assert proc.backend.state is S.STOPPED
    assert "no exit 0.8s after SIGTERM: SIGKILL" in proc.spec.log_path.read_text()
    child = int(next(ln for ln in proc.tail if ln.startswith("child ")).split()[1])
    assert_all_gone([*proc.pids, child])


@pytest.mark.slow
def test_hung_backend_is_killed_and_restarted(llama_server_bin: Path, model: ModelFiles, tmp_path: Path) -> None:
    """A process that neither exits nor answers (SIGSTOP) is killed after hang_timeout_s and restarted."""
    s = settings(cpu_backends=1, hang_timeout_s=1.0, health_interval_s=0.2)
    sup, proc, history = one_backend(s, llama_server_bin, model, tmp_path)

    async def scenario() -> None:
        sup.start()
        await wait_for(lambda: proc.backend.state is S.READY, 30, "ready")
        os.kill(proc.pid, signal.SIGSTOP)  # type: ignore[arg-type]
        await wait_for(lambda: len(proc.pids) == 2 and proc.backend.state is S.READY, 30, "ready after the hang")
        await sup.stop()

    asyncio.run(scenario())
    crashed = next(why for _, st, why in history if st is S.CRASHED)
    assert crashed.startswith("killed by SIGKILL") and "killed as hung" in crashed
    assert_all_gone(proc.pids)


def test_a_wedged_backend_reported_by_the_watchdog_is_restarted(llama_server_bin: Path, model: ModelFiles,
                                                                tmp_path: Path) -> None:
    """The launcher side of gateway/watchdog.py: `Backend.restart` kills a real llama-server, which comes back."""
    s = settings(cpu_backends=1)
    sup, proc, history = one_backend(s, llama_server_bin, model, tmp_path)

    async def scenario() -> None:
        sup.start()
        # the hook is set once the supervisor has seen the health check pass, a loop turn after READY
        await wait_for(lambda: proc.backend.state is S.READY and proc.backend.restart is not None, 30, "ready")
        first = proc.pid
        assert proc.backend.restart is not None
        proc.backend.restart("wedged: slot 0 processing with no progress for 120s")
        await wait_for(lambda: proc.backend.state is S.READY and proc.pid != first, 30, "restarted")
        await sup.stop()

    asyncio.run(scenario())
    crashed = next(reason for _, st, reason in history if st is S.CRASHED)
    assert crashed.startswith("killed by SIGKILL") and "wedged: slot 0 processing with no progress" in crashed
    assert proc.backend.restart is None  # only while a process runs
    assert_all_gone(proc.pids)
