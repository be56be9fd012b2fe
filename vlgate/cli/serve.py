"""`vlgate serve`: the gateway alone, in front of llama-server backends given by URL."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING

from vlgate import __version__
from vlgate.cli.common import (
    CLIError,
    add_config_args,
    config_from_args,
    setup_logging,
)

if TYPE_CHECKING:
    from vlgate.config import Config


def serve_config(args: argparse.Namespace) -> Config:
    """The config file with the command line's overrides (read again on every reload)."""
    from vlgate.config import BackendConfig, parse_config

    config = config_from_args(args)
    if args.backend:
        data = config.model_dump()
        data["backends"] = [BackendConfig(url=u, api_key=args.backend_api_key, slots=args.slots).model_dump()
                            for u in args.backend]
        config = parse_config(data, "command line")
    return config


def cmd_serve(args: argparse.Namespace) -> int:
    config = serve_config(args)
    if not config.backends:
        raise CLIError("no backends: pass --backend URL (repeatable) or list `backends:` in the config "
                       "(or use `vlgate up` to launch llama-server processes)")
    setup_logging(args.log_level, json_lines=config.gateway.log_json)
    from vlgate.gateway.app import create_app
    from vlgate.gateway.server import PortInUse, run

    app = create_app(config, reload_config=lambda: serve_config(args))
    g = config.gateway
    banner = (f"vlgate {__version__}: serving {g.model} on http://{g.host}:{g.port} "
              f"in front of {len(config.backends)} backend(s)")
    if g.log_json:  # a record like every other line (with --log-level info or lower)
        logging.getLogger("vlgate").info(banner)
    else:
        print(banner, file=sys.stderr, flush=True)
    try:
        run(app, g.host, g.port, g.drain_grace_s)
    except PortInUse as exc:
        raise CLIError(str(exc)) from None
    return 0


def register(sub: argparse._SubParsersAction) -> None:
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
