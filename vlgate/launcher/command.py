"""The exact argv and environment of every backend, from the settings and the machine's GPUs.

A pure function of its inputs, so `--dry-run` prints precisely what `up`/`launch` will run.
"""

from __future__ import annotations

import shlex
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from vlgate.launcher.download import ModelFiles
from vlgate.launcher.settings import BackendOverride, LauncherSettings


class LaunchError(RuntimeError):
    """The launch plan is unusable (duplicate names, busy port...); one line says how to fix it."""


@dataclass(frozen=True)
class BackendSpec:
    index: int
    name: str
    gpu: str | None  # CUDA_VISIBLE_DEVICES token; None = CPU
    host: str
    port: int
    parallel: int
    argv: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)  # set on top of the inherited environment
    log_path: Path = Path("/dev/null")

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "", "::") else self.host
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    def shell(self) -> str:
        """One copy-pasteable line: environment assignments, then the command."""
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items())
        return f"{env} {shlex.join(self.argv)}".strip()

    def full_env(self, base: Mapping[str, str]) -> dict[str, str]:
        return {**base, **self.env}


def _num(x: float) -> str:
    return f"{x:g}"


def layout(settings: LauncherSettings, gpus: list[str]) -> list[BackendOverride]:
    """Explicit `backends:` when given, else one per GPU, else `cpu_backends` CPU instances."""
    if settings.backends:
        return list(settings.backends)
    if gpus:
        return [BackendOverride(gpu=g) for g in gpus]
    return [BackendOverride() for _ in range(settings.cpu_backends)]


def _name(entry: BackendOverride, i: int) -> str:
    if entry.name:
        return entry.name
    if entry.gpu is None:
        return f"cpu{i}"
    gpu = str(entry.gpu)
    return f"gpu{gpu}" if gpu.isdigit() else f"gpu{i}"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host if host not in ("", "0.0.0.0") else "127.0.0.1", 0))
        return s.getsockname()[1]


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def build_specs(
    settings: LauncherSettings,
    *,
    binary: Path,
    model: ModelFiles,
    gpus: list[str],
    alias: str,
    log_dir: Path,
) -> list[BackendSpec]:
    """One BackendSpec per backend, ports assigned (port_base + i, or free ports when port_base is 0)."""
    specs: list[BackendSpec] = []
    used: set[int] = set()
    for i, entry in enumerate(layout(settings, gpus)):
        name = _name(entry, i)
        if any(s.name == name for s in specs):
            raise LaunchError(f"launcher.backends: two backends are named {name!r}; give each a unique name")
        if entry.port is not None:
            port = entry.port
        elif settings.port_base:
            port = settings.port_base + i
        else:
            port = free_port(settings.host)
            while port in used:
                port = free_port(settings.host)
        if port in used or port > 65535:
            raise LaunchError(f"backend {name}: port {port} is used twice or out of range; fix launcher.port_base/port")
        used.add(port)
        gpu = None if entry.gpu is None else str(entry.gpu)
        parallel = entry.parallel or settings.parallel
        ctx = entry.ctx_size or settings.ctx_for(parallel)
        threads = entry.threads or settings.threads
        ngl = str(settings.n_gpu_layers) if gpu is not None else "0"
        sampling = settings.sampling
        argv = [
            str(binary),
            "-m", str(model.model),
            "--mmproj", str(model.mmproj),
            "--alias", alias,
            "--host", settings.host,
            "--port", str(port),
            "--parallel", str(parallel),
            "--ctx-size", str(ctx),
            "-ngl", ngl,
            "--image-max-tokens", str(settings.image_max_tokens),
            "--temp", _num(sampling.temp),
            "--top-p", _num(sampling.top_p),
            "--repeat-penalty", _num(sampling.repeat_penalty),
            "-n", str(settings.n_predict),
            "--metrics",
            "--jinja",
        ]  # fmt: skip
        if threads:
            argv += ["-t", str(threads)]
        argv += settings.extra_args + entry.extra_args
        env = {**settings.env, "CUDA_VISIBLE_DEVICES": gpu or "", **entry.env}
        specs.append(
            BackendSpec(
                index=i, name=name, gpu=gpu, host=settings.host, port=port, parallel=parallel,
                argv=tuple(argv), env=env, log_path=log_dir / f"{name}.log",
            )
        )  # fmt: skip
    return specs


def check_ports(specs: list[BackendSpec]) -> None:
    """Fail before starting anything if a backend port is taken."""
    for spec in specs:
        if not port_free(spec.host, spec.port):
            raise LaunchError(
                f"port {spec.port} for backend {spec.name} is already in use; "
                "set launcher.port_base (or the backend's port, or 0 for free ports) in the config"
            )


def describe(spec: BackendSpec) -> str:
    """The dry-run block for one backend."""
    where = f"GPU {spec.gpu}" if spec.gpu is not None else "CPU"
    return f"# {spec.name}: {where}, {spec.url}, {spec.parallel} slots, log {spec.log_path}\n{spec.shell()}"
