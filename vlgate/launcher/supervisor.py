"""Keep every backend alive: restart crashes with exponential backoff + jitter, park crash loops.

The backoff policy is tenacity's `wait_exponential_jitter` (initial * 2**(n-1) + U(0, jitter),
capped); it starts over once a backend has stayed ready for `stable_after_s`. N crashes within
the window park the backend as FAILED with its last log lines in the reason, which the gateway
shows in /ready and /metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass

from tenacity import RetryCallState, wait_exponential_jitter

from vlgate.backends import Backend, BackendState
from vlgate.launcher.command import BackendSpec
from vlgate.launcher.process import BackendProcess, Exit
from vlgate.launcher.settings import LauncherSettings, RestartPolicy

log = logging.getLogger("vlgate.launcher")


@dataclass
class _Attempt:
    """The one field of tenacity's RetryCallState its wait strategies read."""

    attempt_number: int


def backoff(policy: RestartPolicy) -> wait_exponential_jitter:
    return wait_exponential_jitter(
        multiplier=policy.backoff_initial_s, max=policy.backoff_max_s, exp_base=2, jitter=policy.backoff_jitter_s
    )


def delay_for(policy: RestartPolicy, attempt: int) -> float:
    """Seconds to wait before restart number `attempt` (1-based)."""
    state: RetryCallState = _Attempt(attempt)  # type: ignore[assignment]
    return float(backoff(policy)(state))


class CrashWindow:
    """Crash times within the last `window_s`; full = a crash loop."""

    def __init__(self, count: int, window_s: float) -> None:
        self.count, self.window_s = count, window_s
        self.times: deque[float] = deque()

    def add(self, now: float) -> bool:
        self.times.append(now)
        while self.times and now - self.times[0] > self.window_s:
            self.times.popleft()
        return len(self.times) >= self.count


class Supervisor:
    """All backends of this machine; `run()` until `stop()`."""

    def __init__(self, specs: list[BackendSpec], settings: LauncherSettings, *, api_key: str | None = None) -> None:
        self.settings = settings
        self.policy = settings.restart
        self.processes = [
            BackendProcess(
                spec,
                Backend(url=spec.url, name=spec.name, api_key=api_key, slots=spec.parallel, gpu=spec.gpu),
                load_timeout_s=settings.load_timeout_s,
                hang_timeout_s=settings.hang_timeout_s,
                health_interval_s=settings.health_interval_s,
                log_max_bytes=settings.log_max_bytes,
                log_backups=settings.log_backups,
            )
            for spec in specs
        ]
        self.restarts: dict[str, int] = {p.spec.name: 0 for p in self.processes}
        self.delays: dict[str, list[float]] = {p.spec.name: [] for p in self.processes}
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def backends(self) -> list[Backend]:
        return [p.backend for p in self.processes]

    def start(self) -> None:
        """Start every backend at once (the model is already on disk: no download race)."""
        self._tasks = [asyncio.create_task(self._keep_alive(p), name=f"keep:{p.spec.name}") for p in self.processes]

    async def run(self) -> None:
        if not self._tasks:
            self.start()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def all_failed(self) -> bool:
        return all(p.backend.state is BackendState.FAILED for p in self.processes)

    async def _keep_alive(self, proc: BackendProcess) -> None:
        crashes = CrashWindow(self.policy.crash_loop_count, self.policy.crash_loop_window_s)
        attempt = 0
        parks = 0
        while not self._stop.is_set():
            try:
                ended = await proc.run()
            except Exception as exc:  # a launcher bug must not silently orphan a backend: count it as a crash
                log.exception("backend %s: launcher error", proc.spec.name)
                await proc.abort()
                proc.move(BackendState.CRASHED, f"launcher error: {exc}")
                ended = Exit(proc.proc.returncode if proc.proc else None, f"launcher error: {exc}", 0.0)
            if ended is None or self._stop.is_set():
                return
            if ended.ready_for_s >= self.policy.stable_after_s:
                attempt = 0
            if crashes.add(time.monotonic()):
                n, w = len(crashes.times), self.policy.crash_loop_window_s
                cooldown = min(self.policy.parked_cooldown_s * 2**parks, self.policy.parked_cooldown_max_s)
                parks += 1
                proc.move(BackendState.FAILED, f"crash loop ({n} crashes in {w:g}s), parked for {cooldown:g}s "
                                               f"(or until un-parked); last: {ended.reason}")
                log.error("backend %s parked as failed: %s", proc.spec.name, proc.backend.reason)
                why = await self._parked(proc, cooldown)
                if why is None:
                    return
                crashes = CrashWindow(self.policy.crash_loop_count, self.policy.crash_loop_window_s)
                attempt = 0
                proc.move(BackendState.RESTARTING, why)
                log.warning("backend %s: %s", proc.spec.name, why)
                continue
            attempt += 1
            delay = delay_for(self.policy, attempt)
            self.restarts[proc.spec.name] += 1
            self.delays[proc.spec.name].append(delay)
            proc.move(BackendState.RESTARTING, f"restart {attempt} in {delay:.2f}s after: {ended.reason}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)

    async def _parked(self, proc: BackendProcess, cooldown: float) -> str | None:
        """Wait out a park (as Kubernetes' CrashLoopBackOff does) or an operator's un-park; None on stop."""
        unparked = asyncio.Event()

        def unpark() -> bool:
            unparked.set()
            return True

        proc.backend.unpark = unpark
        stop = asyncio.create_task(self._stop.wait())
        woken = asyncio.create_task(unparked.wait())
        try:
            await asyncio.wait({stop, woken}, timeout=cooldown, return_when=asyncio.FIRST_COMPLETED)
        finally:
            proc.backend.unpark = None
            stop.cancel()
            woken.cancel()
        if self._stop.is_set():
            return None
        return "un-parked by an operator" if unparked.is_set() else f"trying again after a {cooldown:g}s park"

    async def wait_idle(self, grace_s: float) -> None:
        """Let running requests finish (for `launch`, where no gateway drains in front)."""
        await asyncio.gather(*(p.wait_idle(grace_s) for p in self.processes if p.alive))

    def kill(self) -> None:
        """Second signal: SIGKILL everything now."""
        self._stop.set()
        for p in self.processes:
            p.kill()

    async def stop(self, timeout_s: float | None = None) -> None:
        """SIGTERM all backends together, SIGKILL after the timeout, and wait for the keepers."""
        self._stop.set()
        timeout = self.settings.stop_timeout_s if timeout_s is None else timeout_s
        await asyncio.gather(*(p.stop(timeout) for p in self.processes))
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(task, 5.0)
        for p in self.processes:
            await p.aclose()

    def pids(self) -> list[int]:
        return [p.pid for p in self.processes if p.pid is not None and p.alive]
