"""Lazy package exports: `from vlgate.images import ImageNormalizer` works, but `import vlgate.images` alone
loads nothing heavy (numpy, aiohttp, PIL), so every `vlgate` subcommand starts fast (bench/cli_start.py)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from importlib import import_module
from typing import Any


def lazy_exports(package: str, table: dict[str, str], names: list[str],
                 ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A package's `__getattr__` and `__dir__` serving `table` (name -> module), imported on first use."""
    namespace = sys.modules[package].__dict__

    def getattr_(name: str) -> Any:
        module = table.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(import_module(module), name)
        namespace[name] = value
        return value

    def dir_() -> list[str]:
        return sorted([*namespace, *names])

    return getattr_, dir_
