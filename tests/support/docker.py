"""A private Docker daemon for tests, with no registry: Debian's docker.io and debootstrap.

`Dockerd` runs Debian's dockerd with its own data root, exec root, pidfile and unix socket: it never touches a
system dockerd, adds no bridge and no iptables rules (builds and containers use the host's network; the
containers listen on 127.0.0.1). The data root is a cache kept between runs (`cache_dir()`, keyed by the
daemon's version): the image layers and BuildKit's build cache — llama-server's 10-minute build stage above all —
survive, so a warm run builds in seconds. What one run creates (containers, `vlgate-test:*` tags, the exec root
and socket) is removed when it stops; the daemon is stopped by its PID.

`base_image()` makes the base every FROM uses: `debootstrap --variant=minbase` of a Debian suite, trimmed like
the official `-slim` images, cached as a tarball keyed by suite and date, then `docker import`ed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from vlgate.launcher.binary import cache_root

DOCKER = "/usr/bin/docker"  # docker.io's client (the same 20.10 as its daemon; another docker may be on PATH)
DOCKERD = "/usr/sbin/dockerd"
DEBOOTSTRAP = "/usr/sbin/debootstrap"
MIRROR = "http://deb.debian.org/debian"
TEST_LABEL = "vlgate.test"  # on every container a test runs, so a crashed run's leftovers are found
TEST_REPO = "vlgate-test"  # the tags tests build; removed at stop

# what debian:*-slim leaves out (debuerreotype's slimify): docs, man pages, translations
SLIM_DPKG_EXCLUDES = """\
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
"""


class DockerError(AssertionError):
    """A docker step failed; the message carries the command's last lines."""


def cache_dir() -> Path:
    """~/.cache/vlgate/docker (VLGATE_CACHE_DIR/docker): data roots and base tarballs, kept between runs."""
    return cache_root() / "docker"


def _apt_install(packages: Sequence[str]) -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env, timeout=600)
    proc = subprocess.run(["apt-get", "install", "-y", "-q", *packages], capture_output=True, text=True, env=env,
                          timeout=900)
    if proc.returncode != 0:
        raise DockerError(f"apt-get install {' '.join(packages)} failed: {proc.stderr.strip()[-2000:]}")


def ensure_tools() -> None:
    """Debian's docker.io (dockerd, containerd, runc, the 20.10 client) and debootstrap, installed when missing.

    A test that cannot get them fails: it runs as root in CI, where apt-get can install them."""
    wanted = {DOCKERD: "docker.io", DOCKER: "docker.io", DEBOOTSTRAP: "debootstrap"}
    missing = sorted({pkg for path, pkg in wanted.items() if not os.access(path, os.X_OK)})
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise DockerError(f"missing {', '.join(missing)}: as root, `apt-get install -y {' '.join(missing)}` "
                          "(the container test needs Debian's dockerd and debootstrap)")
    _apt_install(missing)
    still = [path for path in wanted if not os.access(path, os.X_OK)]
    if still:
        raise DockerError(f"apt-get installed {', '.join(missing)} but {', '.join(still)} is still missing")


def daemon_version() -> str:
    out = subprocess.run([DOCKERD, "--version"], capture_output=True, text=True, timeout=30).stdout
    m = re.search(r"version ([0-9][^\s,]*)", out)
    if not m:
        raise DockerError(f"cannot read dockerd's version from {out!r}")
    return m.group(1)


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _stop_pid(pid: int, timeout_s: float) -> None:
    """SIGTERM, wait, SIGKILL: one process, by PID."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


class Dockerd:
    """One dockerd: data root `cache_dir()/data-<version>` (kept), exec root and socket in a temp dir (removed)."""

    def __init__(self, log_dir: Path) -> None:
        self.root = cache_dir()
        self.data_root = self.root / f"data-{daemon_version()}"
        self.pidfile = self.root / f"dockerd-{daemon_version()}.pid"
        self.log_path = log_dir / "dockerd.log"
        self.run_dir: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self._lock: int | None = None

    @property
    def host(self) -> str:
        assert self.run_dir is not None
        return f"unix://{self.run_dir / 'docker.sock'}"

    def env(self) -> dict[str, str]:
        """The client's: this daemon, BuildKit, and a config dir of its own (no ~/.docker credentials or proxies)."""
        assert self.run_dir is not None
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
        env.update(DOCKER_HOST=self.host, DOCKER_BUILDKIT="1", DOCKER_CONFIG=str(self.run_dir / "client"))
        return env

    # ---------------------------------------------------------------- life

    def start(self, timeout_s: float = 120.0) -> Dockerd:
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = os.open(self.root / "lock", os.O_CREAT | os.O_RDWR, 0o644)
        deadline = time.monotonic() + 1800  # another run of this test holds the data root: wait for it
        while True:
            try:
                fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise DockerError(f"{self.root / 'lock'} stayed locked 30 min (another container test?)") from None
                time.sleep(2)
        self._stop_leftover()
        self.run_dir = Path(tempfile.mkdtemp(prefix="vlgate-dockerd-"))
        (self.run_dir / "client").mkdir()
        self.data_root.mkdir(parents=True, exist_ok=True)
        cmd = [DOCKERD, "--data-root", str(self.data_root), "--exec-root", str(self.run_dir / "exec"),
               "--pidfile", str(self.pidfile), "--host", self.host, "--bridge", "none", "--iptables=false",
               "--ip6tables=false", "--ip-masq=false", "--userland-proxy=false", "--log-level", "warn"]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            if self.proc.poll() is not None:
                raise DockerError(f"dockerd exited {self.proc.returncode}: {self._log_tail()}")
            if self.docker("version", check=False, timeout=10).returncode == 0:
                self._remove_leftovers()
                return self
            time.sleep(0.5)
        raise DockerError(f"dockerd did not answer on {self.host} within {timeout_s}s: {self._log_tail()}")

    def _stop_leftover(self) -> None:
        """A dockerd an earlier (killed) run left on this data root: stopped by the PID in its pidfile."""
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return
        cmd = _cmdline(pid)
        if cmd and cmd[0].endswith("dockerd") and str(self.data_root) in cmd:
            _stop_pid(pid, 60)
        with contextlib.suppress(FileNotFoundError):
            self.pidfile.unlink()

    def _remove_leftovers(self) -> None:
        """Containers and test tags of a run that died before its stop()."""
        ids = self.docker("ps", "-aq", "--filter", f"label={TEST_LABEL}").stdout.split()
        if ids:
            self.docker("rm", "-f", *ids, check=False)
        tags = self.docker("images", "--format", "{{.Repository}}:{{.Tag}}", TEST_REPO).stdout.split()
        if tags:
            self.docker("rmi", "-f", *tags, check=False)

    def stop(self) -> None:
        """Remove this run's containers and tags, bound the build cache, stop dockerd by PID, remove the run dir."""
        try:
            if self.proc is not None and self.proc.poll() is None:
                self._remove_leftovers()
                self.docker("image", "prune", "-f", check=False, timeout=120)  # layers no tag or cache needs
                self.docker("builder", "prune", "-f", "--keep-storage", "6GB", check=False, timeout=300)
        finally:
            if self.proc is not None:
                _stop_pid(self.proc.pid, 60)
            if self.run_dir is not None:
                _unmount_under(self.run_dir)  # dockerd leaves its default netns bind-mounted there
                shutil.rmtree(self.run_dir, ignore_errors=True)
            if self._lock is not None:
                os.close(self._lock)  # releases the flock
                self._lock = None
        if self.proc is not None and Path(f"/proc/{self.proc.pid}").exists():
            raise DockerError(f"dockerd (pid {self.proc.pid}) is still running after SIGKILL")
        if self.run_dir is not None and self.run_dir.exists():
            raise DockerError(f"{self.run_dir} (dockerd's exec root and socket) could not be removed")

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # ---------------------------------------------------------------- commands

    def docker(self, *args: str, check: bool = True, timeout: float = 300, input: bytes | None = None,
               ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([DOCKER, *args], capture_output=True, text=True, env=self.env(), timeout=timeout,
                              input=input.decode() if input is not None else None)
        if check and proc.returncode != 0:
            raise DockerError(f"docker {' '.join(args)} exited {proc.returncode}: "
                              f"{(proc.stderr or proc.stdout).strip()[-3000:]}")
        return proc

    def inspect(self, *names: str) -> list[dict[str, Any]]:
        return list(json.loads(self.docker("inspect", *names).stdout))

    def build(self, context: Path, dockerfile: Path, tag: str, log_path: Path, *, target: str | None = None,
              build_args: dict[str, str] | None = None, secrets: dict[str, Path] | None = None,
              timeout: float = 3000) -> tuple[float, str]:
        """`docker build` with BuildKit on the host network; (seconds, the plain progress output)."""
        cmd = [DOCKER, "build", "--progress=plain", "--network", "host", "-f", str(dockerfile), "-t", tag]
        if target:
            cmd += ["--target", target]
        for key, value in (build_args or {}).items():
            cmd += ["--build-arg", f"{key}={value}"]
        for key, path in (secrets or {}).items():
            cmd += ["--secret", f"id={key},src={path}"]
        started = time.monotonic()
        with open(log_path, "w") as log:
            proc = subprocess.run([*cmd, str(context)], stdout=log, stderr=subprocess.STDOUT, env=self.env(),
                                  timeout=timeout)
        took = time.monotonic() - started
        output = log_path.read_text(errors="replace")
        if proc.returncode != 0:
            tail = "\n".join(output.splitlines()[-60:])
            raise DockerError(f"docker build of {tag} exited {proc.returncode} after {took:.0f}s ({log_path}):\n{tail}")
        return took, output


def _unmount_under(path: Path) -> None:
    """Mounts dockerd left below its exec root (it normally removes them itself): unmounted, deepest first."""
    try:
        mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    except OSError:
        return
    prefix = str(path) + "/"
    for mnt in sorted((m for m in mounts if m.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "-l", mnt], capture_output=True, timeout=30)


# -------------------------------------------------------------------- the base image, from debootstrap

def _debootstrap(suite: str, dest: Path) -> None:
    """A minbase rootfs tarball of `suite`, trimmed like debian:<suite>-slim, written atomically to `dest`."""
    with tempfile.TemporaryDirectory(prefix="rootfs-", dir=dest.parent) as tmp:
        rootfs = Path(tmp) / "rootfs"
        proc = subprocess.run([DEBOOTSTRAP, "--variant=minbase", suite, str(rootfs), MIRROR],
                              capture_output=True, text=True, timeout=1200)
        if proc.returncode != 0:
            raise DockerError(f"debootstrap {suite} failed: {(proc.stderr or proc.stdout).strip()[-2000:]}")
        (rootfs / "etc/apt/sources.list").write_text(
            f"deb {MIRROR} {suite} main\n"
            f"deb {MIRROR} {suite}-updates main\n"
            f"deb {MIRROR}-security {suite}-security main\n")
        (rootfs / "etc/dpkg/dpkg.cfg.d/docker").write_text(SLIM_DPKG_EXCLUDES)
        (rootfs / "etc/apt/apt.conf.d/docker-clean").write_text(
            'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb || true"; };\n'
            'Dir::Cache::pkgcache ""; Dir::Cache::srcpkgcache "";\n')
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/man", "usr/share/info",
                     "usr/share/locale", "usr/share/doc"):
            for child in (rootfs / junk).glob("*"):
                if child.name in ("lock", "partial"):  # apt's own, kept empty
                    continue
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        part = dest.with_suffix(".part")
        subprocess.run(["tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(part), "."], check=True,
                       timeout=600)
        os.replace(part, dest)


def base_image(d: Dockerd, suite: str = "bookworm") -> str:
    """`vlgate-test-base:<suite>-<date>`: the newest cached rootfs of `suite` (debootstrapped once), imported."""
    d.root.mkdir(parents=True, exist_ok=True)
    tarballs = sorted(d.root.glob(f"rootfs-{suite}-minbase-*.tar"))
    if not tarballs:
        tarballs = [d.root / f"rootfs-{suite}-minbase-{time.strftime('%Y%m%d')}.tar"]
        _debootstrap(suite, tarballs[0])
    tag = f"vlgate-test-base:{suite}-{tarballs[-1].stem.rsplit('-', 1)[1]}"
    if d.docker("image", "inspect", tag, check=False).returncode != 0:
        d.docker("import", "--change", "CMD [\"bash\"]", str(tarballs[-1]), tag, timeout=600)
    return tag


@contextlib.contextmanager
def running_dockerd(log_dir: Path) -> Iterator[Dockerd]:
    ensure_tools()
    d = Dockerd(log_dir)
    try:
        yield d.start()
    finally:
        d.stop()
