"""CLI commands of the launcher (`up`, `launch`, `install-server`, `status`); registered by vlgate.cli.

Every failure a user can cause leaves here as one CLIError line (vlgate.cli prints it, exit 2).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from vlgate.cli.common import (
    CLIError,
    add_config_args,
    config_from_args,
    setup_logging,
)

if TYPE_CHECKING:
    from vlgate.config import Config


@contextmanager
def _one_line_errors() -> Iterator[None]:
    """Turn launcher failures into vlgate.cli's CLIError (one line, exit 2, no traceback)."""
    from vlgate.gateway.server import PortInUse
    from vlgate.launcher.command import LaunchError
    from vlgate.launcher.download import ModelError

    try:
        yield
    except (LaunchError, ModelError, PortInUse) as exc:
        raise CLIError(str(exc)) from None


def _config(args: argparse.Namespace) -> Config:
    from vlgate.config import load_config

    if hasattr(args, "port"):  # `up` shares the gateway options of `serve`
        return config_from_args(args)
    return load_config(args.config)


def cmd_up(args: argparse.Namespace) -> int:
    from vlgate.launcher import run

    with _one_line_errors():
        config = _config(args)
        if args.demo:
            config = run.demo_config(config)
        if args.dry_run:
            print(run.render(run.dry_plan(config), config, gateway=True))
            return 0
        setup_logging(args.log_level, json_lines=config.gateway.log_json)
        plan = run.real_plan(config, gateway_port=(config.gateway.host, config.gateway.port))
        # SIGHUP / `vlgate reload`: the gateway's settings (keys, limits, presets, timeouts) from the file again
        return run.up(config, plan,
                      reload_config=lambda: run.demo_config(_config(args)) if args.demo else _config(args))


def cmd_launch(args: argparse.Namespace) -> int:
    from vlgate.launcher import run

    with _one_line_errors():
        config = _config(args)
        if args.dry_run:
            print(run.render(run.dry_plan(config), config, gateway=False))
            return 0
        setup_logging(args.log_level, json_lines=config.gateway.log_json)
        return run.launch(config, run.real_plan(config))


def cmd_install_server(args: argparse.Namespace) -> int:
    from vlgate.launcher.binary import ensure_server

    config = _config(args)
    print(ensure_server(config.launcher.server_binary))
    return 0


def format_status(body: dict[str, object], url: str) -> str:
    """The /ready JSON as a table: one row per backend, the reason last (it can be long)."""
    head = f"gateway {url}: {body.get('status', '?')}"
    extras = [f"{k} {body[k]}" for k in ("in_flight", "queued") if k in body]
    if body.get("draining"):
        extras.insert(0, "draining")
    if extras:
        head += f" ({', '.join(extras)})"
    if body.get("reason"):
        head += f"\n  reason: {body['reason']}"
    rows: list[tuple[str, ...]] = [("NAME", "STATE", "SLOTS", "IN-FLIGHT", "SERVED", "URL", "REASON")]
    backends = body.get("backends")
    for b in backends if isinstance(backends, list) else []:
        if isinstance(b, dict):
            rows.append(tuple(str(b.get(k, "")) for k in ("name", "state", "slots", "in_flight", "served", "url",
                                                         "reason")))
    widths = [max(len(r[i]) for r in rows) for i in range(6)]
    table = ["  ".join(c.ljust(w) for c, w in zip(r[:6], widths, strict=True)) + "  " + r[6] for r in rows]
    return "\n".join([head, *(t.rstrip() for t in table)])


def _ready_body(url: str, timeout: float) -> dict[str, object]:
    """/ready's JSON: what a gateway without /status (an older vlgate) can tell."""
    import httpx

    try:
        return httpx.get(url + "/ready", timeout=timeout).json()
    except (httpx.HTTPError, ValueError) as exc:
        raise CLIError(f"{url}/ready did not answer JSON ({type(exc).__name__}); is that a vlgate gateway?") from None


def cmd_status(args: argparse.Namespace) -> int:
    from vlgate.cli import status as statusview

    url = args.url.rstrip("/")
    key = args.key or statusview.default_key()

    def show() -> int:
        try:
            _, body = statusview.fetch(url, key, args.timeout)
        except statusview.StatusError as exc:
            raise CLIError(str(exc)) from None
        if body is None:
            body = _ready_body(url, args.timeout)
            text = format_status(body, url)
        else:
            text = statusview.render(body, url)
        print(json.dumps(body, indent=2) if args.json else text)
        return 0 if body.get("status") == "ready" else 1

    if args.watch is None:
        return show()

    def show_or_say() -> int:  # a watch outlives a gateway restart: say so and keep watching
        try:
            return show()
        except CLIError as exc:
            print(f"vlgate status: {exc}")
            return 2

    return statusview.watch(show_or_say, args.watch, args.count)


def _config_only(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", metavar="FILE", help="YAML config (default: the embedded configs/default.yaml)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def register(sub: argparse._SubParsersAction) -> None:

    up = sub.add_parser(
        "up", help="launch llama-server backends and the gateway in front of them (the whole set-up)",
        description="Download the model, start one llama-server per GPU (or one on CPU), supervise them, "
                    "and serve the gateway until SIGTERM/SIGINT (which drains first).",
    )
    add_config_args(up)
    up.add_argument("--dry-run", action="store_true", help="print every backend's command line and environment")
    up.add_argument("--demo", action="store_true",
                    help="no GPU, no download: a tiny generated model on CPU (nonsense text, real machinery)")
    up.set_defaults(func=cmd_up)

    launch = sub.add_parser("launch", help="launch and supervise backends only (one machine of a fleet)",
                            description="Start and supervise this machine's llama-server backends until a signal.")
    _config_only(launch)
    launch.add_argument("--dry-run", action="store_true", help="print every backend's command line and environment")
    launch.set_defaults(func=cmd_launch)

    install = sub.add_parser("install-server", help="obtain llama-server (PATH, config, or a cached build) and exit")
    _config_only(install)
    install.set_defaults(func=cmd_install_server)

    status = sub.add_parser("status", help="print the gateway's and every backend's state, load and speed "
                            "(the status page's numbers, from /status)")
    status.add_argument("--url", default="http://127.0.0.1:8000", help="gateway base URL (default: %(default)s)")
    status.add_argument("--timeout", type=float, default=5.0, help="seconds (default: %(default)s)")
    status.add_argument("--json", action="store_true", help="print the raw /status JSON")
    status.add_argument("--key", help="API key when the gateway has keys (default: $VLGATE_API_KEY)")
    status.add_argument("--watch", "-w", type=float, nargs="?", const=2.0, metavar="SECONDS",
                        help="redraw every SECONDS (default 2) until Ctrl-C")
    status.add_argument("--count", type=int, metavar="N", help="with --watch: stop after N redraws")
    status.set_defaults(func=cmd_status)

