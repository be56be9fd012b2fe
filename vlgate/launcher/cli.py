"""CLI commands of the launcher (`up`, `launch`, `install-server`, `status`); registered by vlgate.cli."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:  # filled in by the launcher work
    return None
