"""The `vlgate` command. Every failure a user can cause is one clear line and a non-zero exit."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from vlgate import __version__
from vlgate.config import BackendConfig, Config, ConfigError, load_config, parse_config
from vlgate.server_binary import ServerBinaryError


class CLIError(Exception):
    """One line for the user; main() prints it and exits 2."""


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", metavar="FILE",
                   help="YAML config (default: the embedded configs/default.yaml)")
    p.add_argument("--host", help="address to listen on (default from config: 127.0.0.1)")
    p.add_argument("--port", type=int, help="port to listen on (default from config: 8000)")
    p.add_argument("--model", help="model id to serve at /v1/models (default from config: youtu-vl)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                   help="gateway log level (default: info)")
    p.add_argument("--log-json", action="store_true", help="one JSON line per request on stderr")


def config_from_args(args: argparse.Namespace) -> Config:
    config = load_config(args.config)
    g = config.gateway
    overrides = {}
    if args.host:
        overrides["host"] = args.host
    if args.port is not None:
        overrides["port"] = args.port
    if args.model:
        overrides["model"] = args.model
    if getattr(args, "log_json", False):
        overrides["log_json"] = True
    if overrides:
        data = config.model_dump()
        data["gateway"] = {**g.model_dump(), **overrides}
        config = parse_config(data, "command line")
    return config


def setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper()), format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per health poll is noise


def cmd_serve(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    if args.backend:
        data = config.model_dump()
        data["backends"] = [BackendConfig(url=u, api_key=args.backend_api_key, slots=args.slots).model_dump()
                            for u in args.backend]
        config = parse_config(data, "command line")
    if not config.backends:
        raise CLIError("no backends: pass --backend URL (repeatable) or list `backends:` in the config "
                       "(or use `vlgate up` to launch llama-server processes)")
    setup_logging(args.log_level)
    from vlgate.app import create_app
    from vlgate.server import PortInUse, run

    app = create_app(config)
    g = config.gateway
    print(f"vlgate {__version__}: serving {g.model} on http://{g.host}:{g.port} "
          f"in front of {len(config.backends)} backend(s)", file=sys.stderr, flush=True)
    try:
        run(app, g.host, g.port, g.drain_grace_s)
    except PortInUse as exc:
        raise CLIError(str(exc)) from None
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlgate", description=__doc__ and "OpenAI-compatible gateway for llama-server fleets")
    parser.add_argument("--version", action="version", version=f"vlgate {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the gateway only, in front of llama-server backends given by URL",
                           description="Run the gateway in front of running llama-server backends. "
                                       "Options override the config file.")
    add_config_args(serve)
    serve.add_argument("--backend", "-b", action="append", metavar="URL",
                       help="llama-server base URL, e.g. http://127.0.0.1:8081 (repeatable; replaces config backends)")
    serve.add_argument("--backend-api-key", metavar="KEY",
                       help="the backends' own --api-key (sent upstream; never the client's key)")
    serve.add_argument("--slots", type=int, metavar="N",
                       help="slots per --backend (default: read from each backend's /slots or /props)")
    serve.set_defaults(func=cmd_serve)

    from vlgate.launcher.cli import register

    register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return func(args)
    except (CLIError, ConfigError, ServerBinaryError) as exc:
        print(f"vlgate: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
