"""A real PostgreSQL server for tests: Debian's `postgresql` (installed with apt-get when missing), a cluster
in a temp dir, listening on 127.0.0.1 at a free port (and a socket in the temp dir), stopped by PID.

PostgreSQL refuses to run as root: as root, the cluster belongs to the `postgres` user (the package creates
it) and its programs run through `runuser`. One server serves a whole test session; each test gets a fresh
empty database (`postgres_url`). Import the fixtures into a conftest: `from support.postgres import
postgres_server, postgres_url  # noqa: F401`; any number of conftests share the one server.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

USER = "vlgate"  # the cluster's superuser (trust auth on loopback: any password in a URL is accepted)
START_TIMEOUT_S = 60


class PostgresError(AssertionError):
    """The test server could not be installed or started; the message says why."""


def _run(cmd: list[str], timeout: float = 300) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C.UTF-8"})
    if proc.returncode != 0:
        raise PostgresError(f"{' '.join(cmd)} failed ({proc.returncode}): {(proc.stderr or proc.stdout)[-2000:]}")
    return proc.stdout


def find_bin_dir() -> Path | None:
    """Where initdb, pg_ctl and postgres live (/usr/lib/postgresql/<version>/bin on Debian; newest first)."""
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]), reverse=True)
    return Path(found[0]).parent if found else None


def ensure_installed() -> Path:
    """The bin dir, after `apt-get install postgresql` when it is missing (as root, the way CI runs)."""
    bin_dir = find_bin_dir()
    if bin_dir is not None:
        return bin_dir
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise PostgresError("PostgreSQL is not installed: as root, `apt-get install -y postgresql` "
                            "(the store's tests run against a real server)")
    _run(["apt-get", "update", "-q"], timeout=600)
    _run(["apt-get", "install", "-y", "-q", "--no-install-recommends", "postgresql"], timeout=900)
    bin_dir = find_bin_dir()
    if bin_dir is None:
        raise PostgresError("apt-get installed postgresql but initdb is still missing")
    return bin_dir


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class PostgresServer:
    """One cluster in a temp dir. `start()`, then `new_database()` per test, `stop()` at the end."""

    def __init__(self) -> None:
        self.bin_dir = ensure_installed()
        self.root = Path(tempfile.mkdtemp(prefix="vlgate-pg-"))
        self.data = self.root / "data"
        self.socket_dir = self.root / "sock"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid: int | None = None  # the postmaster's own PID (runuser's child, as root)
        self._names = itertools.count(1)
        self._as: list[str] = []
        if os.geteuid() == 0:  # postgres refuses root: its files and processes belong to `postgres`
            owner = pwd.getpwnam("postgres")
            os.chmod(self.root, 0o755)
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]

    def _make_dirs(self) -> None:
        cmd = [*self._as, "mkdir", "-p", str(self.socket_dir)]
        _run(cmd)

    def start(self) -> PostgresServer:
        self._make_dirs()
        _run([*self._as, str(self.bin_dir / "initdb"), "-D", str(self.data), "-U", USER, "-A", "trust", "-E", "UTF8",
              "--no-sync", "--locale=C.UTF-8"])
        for _ in range(3):  # a free port can be taken between the check and the bind: try another
            self.port = free_port()
            log = open(self.root / "postgres.log", "ab")  # noqa: SIM115  (closed in stop, after the server)
            self.proc = subprocess.Popen(
                [*self._as, str(self.bin_dir / "postgres"), "-D", str(self.data), "-p", str(self.port),
                 "-k", str(self.socket_dir), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
                 "-c", "synchronous_commit=off", "-c", "full_page_writes=off", "-c", "max_connections=200"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            log.close()
            if self._wait_ready():
                return self
            self._kill()
        raise PostgresError(f"postgres did not start: {self.log_tail()}")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                return False
            try:
                with psycopg.connect(self.url("postgres"), connect_timeout=2):
                    self.pid = int((self.data / "postmaster.pid").read_text().split()[0])
                    return True
            except (psycopg.OperationalError, OSError, ValueError, IndexError):
                time.sleep(0.1)
        return False

    def log_tail(self) -> str:
        try:
            return (self.root / "postgres.log").read_text()[-2000:]
        except OSError:
            return "(no log)"

    def url(self, database: str, password: str | None = None) -> str:
        auth = f"{USER}:{password}" if password else USER
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh empty database's name."""
        name = f"test_{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def _kill(self) -> None:
        """Fast shutdown (SIGINT to the postmaster, by PID), SIGKILL if it lingers."""
        pid = self.pid if self.pid is not None else (self.proc.pid if self.proc else None)
        if pid is not None:
            try:
                os.kill(pid, signal.SIGINT)
            except ProcessLookupError:
                pass
        if self.proc is not None:
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.proc, self.pid = None, None

    def stop(self) -> None:
        self._kill()
        shutil.rmtree(self.root, ignore_errors=True)


_shared: PostgresServer | None = None
_users = 0


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """The session's server (started on first use; stopped, by PID, when its last user's session ends)."""
    global _shared, _users
    if _shared is None:
        _shared = PostgresServer().start()
    _users += 1
    try:
        yield _shared
    finally:
        _users -= 1
        if _users == 0:
            server, _shared = _shared, None
            server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """postgresql://... of a fresh, empty database (dropped after the test)."""
    name = postgres_server.new_database()
    yield postgres_server.url(name)
    postgres_server.drop_database(name)
