"""What every `vlgate` subcommand shares: the gateway options, config with overrides, logging, one-line errors.

Imported by `vlgate/cli.py` (the entry) and by the commands of `gateway/` and `launcher/`, never the
other way round, so the command modules register with the entry without an import cycle.
"""

from __future__ import annotations

import argparse
import logging
import sys

from vlgate.config import Config, load_config, parse_config


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
