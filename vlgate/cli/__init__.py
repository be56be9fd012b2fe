"""The `vlgate` command. Every failure a user can cause is one clear line and a non-zero exit.

One module per family of subcommands, each registering itself here: `serve.py` (the gateway alone),
`launch.py` (up, launch, install-server, status), `reload.py`, `ask.py`, `batch.py`, `config_cmd.py`;
`common.py` is what they share. Registering imports only the standard library (heavy imports wait until a
command runs), so `vlgate --help` starts about as fast as Python with pydantic (bench/cli_start.py).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from vlgate import __version__
from vlgate.cli import ask, config_cmd
from vlgate.cli import batch as batch_cli
from vlgate.cli import launch as launcher_cli
from vlgate.cli import reload as reload_cli
from vlgate.cli import serve as gateway_cli
from vlgate.cli.common import CLIError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlgate", description="OpenAI-compatible gateway for llama-server fleets")
    parser.add_argument("--version", action="version", version=f"vlgate {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    gateway_cli.register(sub)
    reload_cli.register(sub)
    launcher_cli.register(sub)
    ask.register(sub)
    batch_cli.register(sub)
    config_cmd.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    # imported once a command runs: `--help` exits in parse_args and never pays for the config's models
    from vlgate.config import ConfigError
    from vlgate.launcher.binary import ServerBinaryError

    try:
        return func(args)
    except (CLIError, ConfigError, ServerBinaryError) as exc:
        print(f"vlgate: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130

