"""The `vlgate` command. Every failure a user can cause is one clear line and a non-zero exit.

One module per family of subcommands, each registering itself here: `serve.py` (the gateway alone),
`launch.py` (up, launch, install-server, status), `reload.py`, `ask.py`; `common.py` is what they share.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from vlgate import __version__
from vlgate.cli import ask
from vlgate.cli.common import CLIError
from vlgate.config import ConfigError
from vlgate.cli import serve as gateway_cli
from vlgate.cli import reload as reload_cli
from vlgate.cli import launch as launcher_cli
from vlgate.launcher.binary import ServerBinaryError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlgate", description="OpenAI-compatible gateway for llama-server fleets")
    parser.add_argument("--version", action="version", version=f"vlgate {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    gateway_cli.register(sub)
    reload_cli.register(sub)
    launcher_cli.register(sub)
    ask.register(sub)
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

