"""One llama-server's lifecycle: spawn, load, ready, exit; stop = SIGTERM, then SIGKILL.

The process runs in its own session (a terminal's Ctrl-C reaches only vlgate, which drains the
gateway before stopping backends) and with PR_SET_PDEATHSIG=SIGKILL, so it dies with vlgate even
when vlgate is SIGKILLed. Its output goes to a rotating log file; the last lines are kept in memory
for the reason shown when it crashes. State changes go through one allowed-transition table.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import logging
import logging.handlers
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from vlgate.backends import Backend, BackendState
from vlgate.launcher.command import BackendSpec

S = BackendState
log = logging.getLogger("vlgate.launcher")

# Which state may follow which. The gateway may also move READY <-> SUSPECT/DOWN on its own.
ALLOWED: dict[BackendState, frozenset[BackendState]] = {
    S.STARTING: frozenset({S.LOADING, S.READY, S.CRASHED, S.DRAINING, S.STOPPED}),
    S.LOADING: frozenset({S.READY, S.CRASHED, S.DRAINING, S.STOPPED}),
    S.READY: frozenset({S.SUSPECT, S.DOWN, S.CRASHED, S.DRAINING, S.STOPPED}),
    S.SUSPECT: frozenset({S.READY, S.DOWN, S.CRASHED, S.DRAINING, S.STOPPED}),
    S.DOWN: frozenset({S.READY, S.SUSPECT, S.CRASHED, S.DRAINING, S.STOPPED}),
    S.CRASHED: frozenset({S.RESTARTING, S.FAILED, S.STOPPED}),
    S.RESTARTING: frozenset({S.STARTING, S.FAILED, S.STOPPED}),
    S.FAILED: frozenset({S.RESTARTING, S.STOPPED}),  # after the parked cool-down, or un-parked by an operator
    S.DRAINING: frozenset({S.STOPPED, S.CRASHED}),
    S.STOPPED: frozenset({S.STARTING}),
}

_PR_SET_PDEATHSIG = 1
_prctl: Callable[..., int] | None
try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here: no dlsym in the forked child
except (OSError, AttributeError):  # not Linux
    _prctl = None


def _child_setup(parent: int) -> None:
    """preexec_fn: die by SIGKILL when vlgate dies; if it already did, die now."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True)
class Exit:
    """How one run of the process ended (None from run() means: stopped on purpose)."""

    returncode: int | None
    reason: str
    ready_for_s: float  # how long it had been ready (0: never)


def describe_exit(code: int | None) -> str:
    if code is None:
        return "did not start"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        why = " (illegal instruction: binary built for another CPU)" if name == "SIGILL" else ""
        return f"killed by {name}{why}"
    return f"exited with code {code}"


class BackendProcess:
    def __init__(
        self,
        spec: BackendSpec,
        backend: Backend,
        *,
        load_timeout_s: float,
        hang_timeout_s: float = 60.0,
        health_interval_s: float = 2.0,
        log_max_bytes: int = 10 * 1024 * 1024,
        log_backups: int = 3,
        tail_lines: int = 40,
    ) -> None:
        self.spec = spec
        self.backend = backend
        self.load_timeout_s = load_timeout_s
        self.hang_timeout_s = hang_timeout_s
        self.health_interval_s = health_interval_s
        self.tail: deque[str] = deque(maxlen=tail_lines)
        self.proc: asyncio.subprocess.Process | None = None
        self.stopping = False
        self.pids: list[int] = []  # every process this backend ever had (tests assert none survives)
        self.file_log = self._file_logger(log_max_bytes, log_backups)
        self._client: httpx.AsyncClient | None = None

    @property
    def client(self) -> httpx.AsyncClient:
        """One HTTP client for this backend's whole life: a client per restart cost memory each time."""
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=2.0, verify=False)  # plain http on loopback
        return self._client

    # ------------------------------------------------------------------ state

    def move(self, new: BackendState, reason: str = "") -> bool:
        """Change state if the table allows it; returns whether it did."""
        old = self.backend.state
        if new is old or new not in ALLOWED[old]:
            if new is old:
                self.backend.set_state(new, reason)
            return new is old
        self.backend.set_state(new, reason)
        msg = f"{self.spec.name}: {old.value} -> {new.value}" + (f" ({reason})" if reason else "")
        self.file_log.info("[vlgate] %s", msg)
        log.info("%s", msg)
        return True

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def last_lines(self, n: int = 3) -> str:
        lines = [ln[:240] for ln in self.tail if ln.strip()][-n:]
        return " | ".join(lines)

    # ------------------------------------------------------------------ running

    async def run(self) -> Exit | None:
        """One life of the process: spawn, wait for /health, then until it exits.

        Returns None when it was stopped on purpose, else how it ended (a crash).
        """
        if self.stopping:
            return None
        try:
            await self._spawn()
        except OSError as exc:
            self.tail.append(f"cannot execute {self.spec.argv[0]}: {exc.strerror or exc}")
            self.move(S.CRASHED, self.last_lines(1))
            return Exit(None, self.tail[-1], 0.0)
        assert self.proc is not None
        if self.stopping:  # stop() ran while we were forking: it could not see this process
            await self._kill_now()
        reader = asyncio.create_task(self._pump(self.proc.stdout), name=f"log:{self.spec.name}")
        exited = asyncio.create_task(self.proc.wait(), name=f"wait:{self.spec.name}")
        # the load watch (True: ready), then the liveness watch (returns once /health stays silent)
        health: asyncio.Task[bool] | asyncio.Task[None] = asyncio.create_task(
            self._until_ready(), name=f"load:{self.spec.name}")
        ready_at: float | None = None
        try:
            done, _ = await asyncio.wait({exited, health}, return_when=asyncio.FIRST_COMPLETED)
            if health in done and health.result():
                ready_at = time.monotonic()
                self.backend.restart = self._restart_wedged
                health = asyncio.create_task(self._until_hung(), name=f"alive:{self.spec.name}")
                done, _ = await asyncio.wait({exited, health}, return_when=asyncio.FIRST_COMPLETED)
                if health in done:  # alive but deaf: only a kill brings it back
                    self.tail.append(f"/health silent for {self.hang_timeout_s:g}s: killed as hung")
                    await self._kill_now()
            elif health in done:  # load timeout: it counts as a crash
                self.tail.append(f"not ready after {self.load_timeout_s:g}s")
                await self._kill_now()
        finally:
            self.backend.restart = None
            health.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await health
            await self._finish_pump(reader)
        code = self.proc.returncode
        self.file_log.info("[vlgate] %s pid %s %s", self.spec.name, self.proc.pid, describe_exit(code))
        if self.stopping:
            return None
        ready_for = time.monotonic() - ready_at if ready_at is not None else 0.0
        reason = describe_exit(code)
        if tail := self.last_lines():
            reason += f": {tail}"
        self.move(S.CRASHED, reason)
        return Exit(code, reason, ready_for)

    def _restart_wedged(self, reason: str) -> None:
        """The gateway's watchdog saw a slot stop making progress: kill it; run() restarts it like a crash."""
        self.tail.append(reason)
        self.file_log.info("[vlgate] %s: %s: killed to restart", self.spec.name, reason)
        self._signal(signal.SIGKILL)

    async def _spawn(self) -> None:
        self.move(S.STARTING, "")
        self.tail.clear()  # a crash reason speaks of this run only
        self.spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.file_log.info("[vlgate] start %s: %s", self.spec.name, self.spec.shell())
        # the death signal follows the forking *thread*: only the main thread lives as long as vlgate
        main = threading.current_thread() is threading.main_thread()
        self.proc = await asyncio.create_subprocess_exec(
            *self.spec.argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=self.spec.full_env(os.environ),
            start_new_session=True,
            preexec_fn=functools.partial(_child_setup, os.getpid()) if main else None,  # the parent: vlgate
            limit=1 << 20,
        )
        self.pids.append(self.proc.pid)
        self.file_log.info("[vlgate] %s pid %d", self.spec.name, self.proc.pid)

    async def _until_ready(self) -> bool:
        """Poll /health: 503 = loading, 200 = ready. False on load timeout."""
        deadline = time.monotonic() + self.load_timeout_s
        delay = 0.05
        while time.monotonic() < deadline:
            try:
                r = await self.client.get(self.spec.url + "/health", headers=self.backend.auth_headers())
            except httpx.HTTPError:
                r = None
            if r is not None and r.status_code == 200:
                self.move(S.READY, "")
                return True
            if r is not None and r.status_code == 503 and self.backend.state is S.STARTING:
                self.move(S.LOADING, "Loading model")
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.5)
        return False

    async def _until_hung(self) -> None:
        """Return once a ready process's /health has not answered 200 for hang_timeout_s."""
        last_ok = time.monotonic()
        timeout = min(self.hang_timeout_s, 10.0)
        while self.stopping or time.monotonic() - last_ok < self.hang_timeout_s:  # stopping: stop() owns it
            await asyncio.sleep(self.health_interval_s)
            with contextlib.suppress(httpx.HTTPError):
                r = await self.client.get(self.spec.url + "/health", headers=self.backend.auth_headers(),
                                          timeout=timeout)
                if r.status_code == 200:
                    last_ok = time.monotonic()

    async def _pump(self, stream: asyncio.StreamReader | None) -> None:
        if stream is None:
            return
        while True:
            try:
                raw = await stream.readline()
            except ValueError:  # a line over the limit: take what is buffered
                raw = await stream.read(1 << 20)
            if not raw:
                return
            line = raw.decode(errors="replace").rstrip("\n")
            self.tail.append(line)
            self.file_log.info("%s", line)

    async def _finish_pump(self, reader: asyncio.Task[None]) -> None:
        try:
            await asyncio.wait_for(reader, 2.0)
        except (TimeoutError, asyncio.CancelledError):
            reader.cancel()

    # ------------------------------------------------------------------ stopping

    def _signal(self, sig: int) -> None:
        if not self.alive:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)  # type: ignore[union-attr]  # own session: pgid == pid

    async def _kill_now(self) -> None:
        self._signal(signal.SIGKILL)
        if self.proc is not None:
            await self.proc.wait()

    async def abort(self) -> None:
        """SIGKILL and reap, leaving the state to the caller (the supervisor's last resort)."""
        await self._kill_now()

    def kill(self) -> None:
        """Immediate SIGKILL (a second Ctrl-C); run() notices the exit."""
        self.stopping = True
        self._signal(signal.SIGKILL)

    async def stop(self, timeout_s: float) -> None:
        """SIGTERM, wait up to `timeout_s`, then SIGKILL. Safe to call in any state."""
        self.stopping = True
        if self.alive:
            self.move(S.DRAINING, "stopping")
            self._signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), timeout_s)  # type: ignore[union-attr]
            except TimeoutError:
                self.file_log.info("[vlgate] %s: no exit %gs after SIGTERM: SIGKILL", self.spec.name, timeout_s)
                await self._kill_now()
        if self.backend.state is not S.FAILED:
            self.move(S.STOPPED, "")

    async def wait_idle(self, grace_s: float) -> bool:
        """Wait until no slot is processing (`launch` drains this way, having no gateway); False on timeout."""
        deadline = time.monotonic() + grace_s
        while self.alive and time.monotonic() < deadline:
            try:
                r = await self.client.get(self.spec.url + "/slots", headers=self.backend.auth_headers())
                slots = r.json() if r.status_code == 200 else None
            except (httpx.HTTPError, ValueError):
                slots = None
            if not isinstance(slots, list) or not any(s.get("is_processing") for s in slots if isinstance(s, dict)):
                return True
            await asyncio.sleep(0.2)
        return not self.alive

    # ------------------------------------------------------------------ logs

    def _file_logger(self, max_bytes: int, backups: int) -> logging.Logger:
        logger = logging.getLogger(f"vlgate.backend.{self.spec.name}.{id(self)}")
        logger.propagate = False
        logger.setLevel(logging.INFO)
        self.spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.handlers.RotatingFileHandler(self.spec.log_path, maxBytes=max_bytes, backupCount=backups)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        logger.addHandler(handler)
        return logger

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        self.close()

    def close(self) -> None:
        for handler in list(self.file_log.handlers):
            handler.close()
            self.file_log.removeHandler(handler)
