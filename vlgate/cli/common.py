"""What every `vlgate` subcommand shares: the gateway options, config with overrides, logging, one-line errors.

Imported by `vlgate/cli.py` (the entry) and by the commands of `gateway/` and `launcher/`, never the
other way round, so the command modules register with the entry without an import cycle.

Only the standard library is imported at the top: `vlgate --help` and every subcommand's `--help` load
this module, and the config (pydantic models of every part) comes in when a command runs.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import logging
import sys
import types
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vlgate.config import Config


class CLIError(Exception):
    """One line for the user; main() prints it and exits 2."""


def lazy_import(name: str) -> types.ModuleType:
    """`name`, imported when one of its attributes is first read (importlib's LazyLoader): a command module
    can name httpx at its top without every `vlgate --help` paying for it."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        raise ImportError(f"no module named {name!r}")
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    return module


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", metavar="FILE",
                   help="YAML config (default: the embedded configs/default.yaml)")
    p.add_argument("--host", help="address to listen on (default from config: 127.0.0.1)")
    p.add_argument("--port", type=int, help="port to listen on (default from config: 8000)")
    p.add_argument("--model", help="model id to serve at /v1/models (default from config: youtu-vl)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                   help="gateway log level (default: info)")
    p.add_argument("--log-json", action="store_true",
                   help="every log line one JSON object (access lines with the request's fields) on stderr")


def config_from_args(args: argparse.Namespace) -> Config:
    from vlgate.config import load_config, parse_config

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


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# the fields every LogRecord has; anything else on a record came in `extra=` and goes into the JSON object
_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: `ts` (ISO 8601, UTC), `level`, `logger`, `message`, then the fields given
    with `extra=` (the access lines' request fields), and `exc` (the traceback as one string) when any."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS and key not in out:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str)


class JsonLines:
    """A text stream whose every line becomes one JSON object: what prints to stderr in a `--log-json`
    process (a line a library or the launcher prints) still parses, as `logger` "stderr". Lines that are
    JSON objects already pass through."""

    def __init__(self, raw: IO[str], name: str = "stderr") -> None:
        self.raw = raw
        self.name = name
        self._pending = ""
        self._formatter = JsonFormatter()

    def write(self, text: str) -> int:
        self._pending += text
        while "\n" in self._pending:
            line, self._pending = self._pending.split("\n", 1)
            self._line(line)
        return len(text)

    def _line(self, line: str) -> None:
        if not line.strip():
            return
        if not (line.startswith("{") and line.endswith("}")):
            record = logging.LogRecord(self.name, logging.INFO, "", 0, line.rstrip("\r"), (), None)
            line = self._formatter.format(record)
        self.raw.write(line + "\n")

    def flush(self) -> None:
        if self._pending:
            pending, self._pending = self._pending, ""
            self._line(pending)
        self.raw.flush()

    def __getattr__(self, name: str) -> Any:  # fileno, isatty, encoding...: the real stream's
        return getattr(self.raw, name)


def setup_logging(level: str, json_lines: bool = False) -> None:
    """Root logging for a serving command. `json_lines` (`--log-json`, `gateway.log_json`): every line the
    process writes to stderr is one JSON object: records through `JsonFormatter` (uvicorn's loggers too:
    gateway/server.py gives uvicorn no handlers of its own), Python warnings as records, an uncaught
    exception as one record, and any other line printed to stderr wrapped by `JsonLines`."""
    handler: logging.Handler = logging.StreamHandler(sys.stderr)
    if json_lines:
        wrapped = sys.stderr if isinstance(sys.stderr, JsonLines) else JsonLines(sys.stderr)
        sys.stderr = wrapped
        handler = logging.StreamHandler(wrapped.raw)  # records are JSON already: straight to the real stream
        handler.setFormatter(JsonFormatter())
        logging.captureWarnings(True)
        sys.excepthook = _log_uncaught
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    handler.name = "vlgate"
    root = logging.getLogger()
    for old in root.handlers[:]:  # ours from an earlier call (tests run commands in-process); others stay
        if old.name == "vlgate":
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per health poll is noise


def _log_uncaught(kind: type[BaseException], exc: BaseException, tb: types.TracebackType | None) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, exc, tb)
        return
    logging.getLogger("vlgate").critical("uncaught exception", exc_info=(kind, exc, tb))
