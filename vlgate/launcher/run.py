"""`up` and `launch`: plan (binary, model, GPUs, argv), then run backends (and the gateway) until a signal.

Order matters: cheap checks first (ports), then the binary and the model download (once, before
any backend starts), then every backend at once. On SIGTERM/SIGINT the gateway drains first
(/ready 503, in-flight finishes within the grace), then backends get SIGTERM, then SIGKILL;
a second signal skips straight to SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from vlgate.config import Config, parse_config
from vlgate.launcher import command, download, gpus
from vlgate.launcher.binary import (
    build_flags,
    cache_root,
    cached_binary_path,
    ensure_server,
    find_server,
)
from vlgate.launcher.command import BackendSpec, LaunchError
from vlgate.launcher.download import ModelFiles
from vlgate.launcher.settings import LauncherSettings
from vlgate.launcher.supervisor import Supervisor

log = logging.getLogger("vlgate.launcher")


@dataclass
class Plan:
    binary: Path
    model: ModelFiles
    gpus: list[str]
    specs: list[BackendSpec]
    notes: list[str] = field(default_factory=list)


def resolve_gpus(settings: LauncherSettings) -> list[str]:
    return gpus.detect() if settings.gpus == "auto" else [str(g) for g in settings.gpus]


def log_dir(settings: LauncherSettings) -> Path:
    return Path(settings.log_dir).expanduser() if settings.log_dir else cache_root() / "logs"


def alias(config: Config) -> str:
    return config.launcher.alias or config.gateway.model


def _specs(config: Config, binary: Path, model: ModelFiles, found: list[str]) -> list[BackendSpec]:
    s = config.launcher
    return command.build_specs(s, binary=binary, model=model, gpus=found, alias=alias(config), log_dir=log_dir(s))


def dry_plan(config: Config) -> Plan:
    """What would run, touching nothing: no build, no download, no port taken."""
    s = config.launcher
    notes: list[str] = []
    binary = find_server(s.server_binary)
    if binary is None:
        binary = cached_binary_path(build_flags())
        notes.append("llama-server is not built yet: `vlgate up` builds it first (or run `vlgate install-server`)")
    model, model_notes = download.locate(s.model)
    found = resolve_gpus(s)
    return Plan(binary, model, found, _specs(config, binary, model, found), notes + model_notes)


def real_plan(config: Config, *, gateway_port: tuple[str, int] | None = None) -> Plan:
    """Check ports, obtain the binary, download the model; then the exact specs."""
    found = resolve_gpus(config.launcher)
    if gateway_port is not None:
        from vlgate.gateway.server import check_port_free

        check_port_free(*gateway_port)
    if config.launcher.port_base:  # fail on a busy port before a long build or download
        command.check_ports(dry_plan(config).specs)
    logs = log_dir(config.launcher)
    try:
        logs.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LaunchError(f"launcher.log_dir: cannot create {logs} ({exc.strerror}); set launcher.log_dir") from None
    binary = ensure_server(config.launcher.server_binary)
    model = download.fetch(config.launcher.model)
    specs = _specs(config, binary, model, found)
    command.check_ports(specs)
    return Plan(binary, model, found, specs)


def render(plan: Plan, config: Config, *, gateway: bool) -> str:
    s = config.launcher
    where = ", ".join(plan.gpus) if plan.gpus else "none: CPU only"
    lines = [
        "# dry run: nothing was started",
        f"# llama-server: {plan.binary}",
        f"# GPUs: {where}",
        f"# model: {plan.model.model}",
        f"# mmproj: {plan.model.mmproj}",
        f"# per slot: {s.image_max_tokens} image + {s.prompt_tokens} prompt + {s.n_predict} answer tokens"
        f" -> {s.slot_ctx()} (rounded up to 256); --ctx-size = slots x that unless set",
        f"# logs: {log_dir(s)}; every backend also inherits vlgate's environment",
    ]
    if gateway:
        lines.append(f"# gateway: http://{config.gateway.host}:{config.gateway.port} -> {len(plan.specs)} backend(s)")
    lines += [f"# note: {n}" for n in plan.notes]
    for spec in plan.specs:
        lines += ["", command.describe(spec)]
    return "\n".join(lines)


def demo_config(config: Config) -> Config:
    """The tiny generated model on CPU: two backends of one thread each, free ports, short answers."""
    from vlgate.tinymodel.model import write_tiny_model

    tiny = write_tiny_model(cache_root() / "demo")
    data = config.model_dump()
    data["launcher"].update(
        model={**data["launcher"]["model"], "path": str(tiny.model), "mmproj": str(tiny.mmproj)},
        gpus=[], backends=[], cpu_backends=2, parallel=2, threads=1, n_predict=256, port_base=0,
    )
    return parse_config(data, "--demo")


# ---------------------------------------------------------------------- running


class _Signals:
    """Python-level SIGTERM/SIGINT handler around uvicorn's own (which it restores and re-raises)."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self.supervisor: Supervisor | None = None
        self.stopping = False

    def __call__(self, sig: int, frame: object) -> None:
        self.received.append(sig)
        if self.stopping and self.supervisor is not None:
            self.supervisor.kill()

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self)


def _runner() -> asyncio.Runner:
    try:
        import uvloop

        return asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        return asyncio.Runner()


def _announce(specs: list[BackendSpec]) -> None:
    for spec in specs:
        where = f"GPU {spec.gpu}" if spec.gpu is not None else "CPU"
        print(f"[vlgate] backend {spec.name} ({where}) on {spec.url}, log {spec.log_path}", file=sys.stderr)


async def _up(config: Config, plan: Plan, signals: _Signals, reload_config: Callable[[], Config] | None) -> int:
    from vlgate.gateway.app import create_app
    from vlgate.gateway.server import serve

    g = config.gateway
    sup = Supervisor(plan.specs, config.launcher)
    signals.supervisor = sup
    app = create_app(config, sup.backends, poll_health=False, reload_config=reload_config)
    sup.start()
    print(f"[vlgate] gateway on http://{g.host}:{g.port} (model {g.model}; status page: open it in a browser); "
          "Ctrl-C drains and stops", file=sys.stderr)
    try:
        await serve(app, g.host, g.port, g.drain_grace_s)
    finally:
        signals.stopping = True
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, sup.kill)
        log.info("gateway stopped; stopping %d backend(s)", len(sup.processes))
        await sup.stop()
    return 0


def up(config: Config, plan: Plan, reload_config: Callable[[], Config] | None = None) -> int:
    """Launcher + gateway in one process tree; returns after a signal has drained everything."""
    _announce(plan.specs)
    signals = _Signals()
    signals.install()
    try:
        with _runner() as runner:
            return runner.run(_up(config, plan, signals, reload_config))
    finally:
        signals.install()  # closing the loop restored SIG_DFL: a late SIGTERM must not turn exit 0 into -15


async def _launch(config: Config, plan: Plan) -> int:
    sup = Supervisor(plan.specs, config.launcher)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal() -> None:
        if stop.is_set():
            sup.kill()
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    for b in sup.backends:
        b.listeners.append(lambda _b: stop.set() if sup.all_failed() else None)
    sup.start()
    await stop.wait()
    code = 1 if sup.all_failed() else 0
    if code:
        print("vlgate: error: every backend is parked as failed: "
              + "; ".join(f"{b.name}: {b.reason}" for b in sup.backends), file=sys.stderr)
    else:
        log.info("signal: waiting up to %gs for running requests, then stopping", config.gateway.drain_grace_s)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(sup.wait_idle(config.gateway.drain_grace_s), config.gateway.drain_grace_s + 1)
    await sup.stop()
    return code


def launch(config: Config, plan: Plan) -> int:
    """Backends only (one machine of a fleet), supervised until SIGTERM/SIGINT."""
    if not plan.specs:
        raise LaunchError("no backends to launch (launcher.backends is empty and no GPU/CPU instance planned)")
    _announce(plan.specs)
    signals = _Signals()
    try:
        with _runner() as runner:
            return runner.run(_launch(config, plan))
    finally:
        signals.install()  # see up()
