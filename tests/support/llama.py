"""Run real `llama-server` processes in tests: free port, own process group, log file, health wait.

Why the care: the test machine has other services on fixed ports, 2 cores and several servers per
test, so a server must be proven to be *ours* (port free before, our process alive, /props reports our
model), must never outlive the test run, and must explain itself (log tail) when it fails to start.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Sequence
from pathlib import Path

import httpx

_LIVE: weakref.WeakSet[LlamaServer] = weakref.WeakSet()
_PR_SET_PDEATHSIG = 1


def free_port() -> int:
    """A port the kernel just handed out on 127.0.0.1 (free at that moment)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _die_with_parent() -> None:
    """preexec_fn: SIGKILL the server when the test process dies (even by SIGKILL / os._exit)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


class LlamaServerError(RuntimeError):
    """The server did not come up healthy (the message carries the log tail)."""


class LlamaServer:
    """One llama-server on 127.0.0.1:<free port>. Use `with LlamaServer(...) as s:` or start()/stop()."""

    def __init__(
        self,
        binary: Path,
        model: Path,
        *,
        mmproj: Path | None = None,
        slots: int = 2,
        ctx: int = 512,
        threads: int = 1,
        metrics: bool = True,
        extra_args: Sequence[str] = (),
        log_dir: Path | None = None,
        startup_timeout: float = 60.0,
    ) -> None:
        self.binary, self.model, self.mmproj = Path(binary), Path(model), mmproj
        self.slots, self.ctx, self.threads, self.metrics = slots, ctx, threads, metrics
        self.extra_args = list(extra_args)
        self.log_dir = Path(log_dir) if log_dir else Path(tempfile.mkdtemp(prefix="llama-server-"))
        self.startup_timeout = startup_timeout
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.log_dir / "llama-server.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None, "server not started"
        return self.proc.pid

    def args(self) -> list[str]:
        cmd = [str(self.binary), "-m", str(self.model), "--host", "127.0.0.1", "--port", str(self.port),
               "-c", str(self.ctx), "-np", str(self.slots), "-t", str(self.threads)]
        if self.mmproj is not None:
            cmd += ["--mmproj", str(self.mmproj)]
        if self.metrics:
            cmd.append("--metrics")
        return cmd + self.extra_args

    def start(self, attempts: int = 3) -> LlamaServer:
        """Start and wait until healthy; retries on a new port if another process grabbed ours."""
        for attempt in range(attempts):
            self.port = free_port()
            self._spawn()
            try:
                self._wait_healthy()
                return self
            except LlamaServerError:
                port_stolen = not port_is_free(self.port) and self.proc is not None and self.proc.poll() is not None
                self.stop()
                if not port_stolen or attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    def _spawn(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== {' '.join(self.args())}\n".encode())
            log.flush()
            # the death signal follows the starting *thread*: only ask for it from the main thread
            main = threading.current_thread() is threading.main_thread()
            self.proc = subprocess.Popen(
                self.args(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=_die_with_parent if main else None,
            )
        _LIVE.add(self)

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        with httpx.Client(base_url=self.url, timeout=2.0) as client:
            while True:
                if self.proc is None or self.proc.poll() is not None:
                    code = None if self.proc is None else self.proc.returncode
                    raise LlamaServerError(f"llama-server exited with {code} before healthy\n{self.log_tail()}")
                try:
                    if client.get("/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise LlamaServerError(
                        f"llama-server not healthy after {self.startup_timeout}s on {self.url}\n{self.log_tail()}")
                time.sleep(0.05)
            # prove the answer came from our process: it is alive and /props names our model file
            try:
                model_path = client.get("/props").json().get("model_path")
            except (httpx.HTTPError, ValueError, AttributeError) as e:
                raise LlamaServerError(f"{self.url}/props failed ({e!r}): not a llama-server of ours?") from e
        if self.proc.poll() is not None or (model_path and Path(model_path).resolve() != self.model.resolve()):
            raise LlamaServerError(f"{self.url} is answered by another process (model {model_path!r})")

    def log_tail(self, n: int = 40) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(["--- llama-server log tail ---", *lines[-n:]])

    def kill(self) -> None:
        """SIGKILL the process group (simulates a crash)."""
        self._signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait()

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after `timeout`; safe to call twice."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        _LIVE.discard(self)

    def _signal(self, sig: signal.Signals) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, sig)  # own session: pgid == pid
        except ProcessLookupError:
            pass

    def __enter__(self) -> LlamaServer:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@atexit.register
def _stop_all() -> None:
    for server in list(_LIVE):
        server.kill()
