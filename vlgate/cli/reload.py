"""`vlgate reload`: make a running gateway re-read its config file, and say whether it took it.

It finds the gateway's process id on `/ready` (or takes `--pid`), sends SIGHUP (what
`systemctl reload` does too), then watches `/ready` until the config generation moves (applied)
or a refusal appears (the reason is printed; the old config keeps running).
"""

from __future__ import annotations

import argparse
import os
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlgate.cli.common import CLIError, lazy_import

if TYPE_CHECKING:
    import httpx
else:
    httpx = lazy_import("httpx")  # imported when `vlgate reload` runs, not for every `vlgate --help`


def _ready(client: httpx.Client, url: str) -> dict[str, Any]:
    try:
        body = client.get(url + "/ready").json()
    except httpx.HTTPError as exc:
        raise CLIError(f"cannot reach the gateway at {url} ({type(exc).__name__}); pass --url") from None
    except ValueError:
        raise CLIError(f"{url}/ready did not answer JSON; is that a vlgate gateway?") from None
    if "config" not in body:
        raise CLIError(f"{url}/ready shows no config state: pass --api-key (the gateway has API keys)")
    return body


def _is_vlgate(pid: int) -> bool:
    try:
        return b"vlgate" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc (not Linux): trust the pid


def cmd_reload(args: argparse.Namespace) -> int:
    url = args.url.rstrip("/")
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    with httpx.Client(timeout=5.0, headers=headers) as client:
        before = _ready(client, url)
        pid = args.pid or before.get("pid")
        if not isinstance(pid, int) or not _is_vlgate(pid):
            raise CLIError(f"process {pid} is not a vlgate gateway on this machine; run `vlgate reload` where the "
                           "gateway runs (or pass --pid)")
        try:
            os.kill(pid, signal.SIGHUP)
        except ProcessLookupError:
            raise CLIError(f"no process {pid} here: run `vlgate reload` on the gateway's machine (or pass --pid)") from None
        except PermissionError:
            raise CLIError(f"not allowed to signal process {pid}: run as the gateway's user") from None
        old = before["config"]
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            now = _ready(client, url)["config"]
            if now["generation"] != old["generation"]:
                changes = "; ".join(now.get("last_changes") or []) or "no changes"
                print(f"reloaded: generation {now['generation']} ({changes})")
                return 0
            if now.get("refused_at") and now.get("refused_at") != old.get("refused_at"):
                print(f"vlgate: error: reload refused, the running config stays: {now['reload_error']}")
                return 1
            time.sleep(0.1)
    raise CLIError(f"the gateway did not report a reload within {args.timeout:g}s")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reload", help="make a running gateway re-read its config file (SIGHUP) and report",
                       description="Send SIGHUP to the gateway serving --url and wait until it reports the new "
                                   "config, or why it refused it (the old config then stays).")
    p.add_argument("--url", default="http://127.0.0.1:8000", help="gateway base URL (default: %(default)s)")
    p.add_argument("--pid", type=int, help="the gateway's process id (default: the one /ready reports)")
    p.add_argument("--api-key", default=os.environ.get("VLGATE_API_KEY"),
                   help="a client key, when the gateway has keys (default: $VLGATE_API_KEY)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the answer (default: %(default)s)")
    p.set_defaults(func=cmd_reload)
