"""`vlgate reload`: make a running gateway re-read its config file, and say whether it took it.

It finds the gateway's process id on `/ready` (an admin key's view; or takes `--pid`), checks that
this process holds the socket listening on the URL's port, sends SIGHUP (what `systemctl reload`
does too), then watches `/ready` until the config generation moves (applied) or a refusal appears
(the reason is printed; the old config keeps running).

Why the socket check: whatever answers on the URL names the pid. Without proof, a server on that
port (or one a web page or DNS points the CLI at) could make it signal any process of this user.
The proof is Linux's: the listening socket's inode (/proc/net/tcp{,6}) among /proc/PID/fd's links.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from vlgate.cli.common import CLIError, lazy_import

if TYPE_CHECKING:
    import httpx
else:
    httpx = lazy_import("httpx")  # imported when `vlgate reload` runs, not for every `vlgate --help`

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's `st` column


def _ready(client: httpx.Client, url: str) -> dict[str, Any]:
    try:
        r = client.get(url + "/ready")
        body = r.json()
    except httpx.HTTPError as exc:
        raise CLIError(f"cannot reach the gateway at {url} ({type(exc).__name__}); pass --url") from None
    except ValueError:
        raise CLIError(f"{url}/ready did not answer JSON; is that a vlgate gateway?") from None
    if not isinstance(body, dict) or "config" not in body:
        if isinstance(body, dict) and "backends" in body:
            raise CLIError(f"{url}/ready shows no config state to a user key: pass an admin key (--api-key)")
        raise CLIError(f"{url}/ready shows no config state: pass --api-key (an admin key; the gateway has API keys)")
    return body


def _address(hex_addr: str) -> IPAddress:
    """An address as /proc/net/tcp{,6} prints it: 32-bit words in host (little-endian) order."""
    raw = bytes.fromhex(hex_addr)
    if len(raw) == 4:
        return ipaddress.IPv4Address(raw[::-1])
    return ipaddress.IPv6Address(b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4)))


def _unmapped(ip: IPAddress) -> IPAddress:
    return ip.ipv4_mapped or ip if isinstance(ip, ipaddress.IPv6Address) else ip


def listening_inodes(addresses: set[IPAddress], port: int, proc: Path = Path("/proc")) -> set[str]:
    """Inodes of the sockets listening on `port` at one of `addresses` or at a wildcard address."""
    found = set()
    for table in ("net/tcp", "net/tcp6"):
        try:
            lines = (proc / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != _LISTEN:
                continue
            addr_hex, _, port_hex = fields[1].partition(":")
            if int(port_hex, 16) != port:
                continue
            ip = _address(addr_hex)
            if ip.is_unspecified or _unmapped(ip) in addresses:
                found.add(fields[9])
    return found


def socket_inodes(pid: int, proc: Path = Path("/proc")) -> set[str]:
    """The inodes of the sockets process `pid` holds (PermissionError: another user's process)."""
    inodes = set()
    for fd in (proc / str(pid) / "fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def url_endpoint(url: str) -> tuple[set[IPAddress], int]:
    """The addresses the URL's host resolves to here, and its port."""
    parts = urlsplit(url)
    if not parts.hostname:
        raise CLIError(f"--url {url!r} has no host")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise CLIError(f"cannot resolve {parts.hostname!r}: {exc}") from None
    return {_unmapped(ipaddress.ip_address(str(i[4][0]).split("%", 1)[0])) for i in infos}, port


def serving_problem(pid: int, url: str, proc: Path = Path("/proc")) -> str | None:
    """Why `pid` is not proven to be the process listening at `url` on this machine; None when it is."""
    try:
        if os.readlink(proc / str(pid) / "ns" / "net") != os.readlink(proc / "self" / "ns" / "net"):
            return f"process {pid} is in another network namespace (a container?): run `vlgate reload` there"
        held = socket_inodes(pid, proc)
    except FileNotFoundError:
        return f"no process {pid} here: run `vlgate reload` on the gateway's machine"
    except PermissionError:
        return f"not allowed to inspect process {pid}: run as the gateway's user"
    addresses, port = url_endpoint(url)
    listening = listening_inodes(addresses, port, proc)
    if not listening:
        return f"nothing on this machine listens at {url}: run `vlgate reload` on the gateway's machine"
    if not held & listening:
        return f"process {pid} does not hold the socket listening at {url}: not signalling it"
    return None


def cmd_reload(args: argparse.Namespace) -> int:
    url = args.url.rstrip("/")
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    with httpx.Client(timeout=5.0, headers=headers) as client:
        before = _ready(client, url)
        pid = args.pid or before.get("pid")
        if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
            raise CLIError(f"{url}/ready names no process id ({pid!r}); pass --pid")
        if Path("/proc/self/fd").is_dir():
            problem = serving_problem(pid, url)
            if problem:
                raise CLIError(problem)
        elif not args.pid:  # no /proc (not Linux): only a pid the operator names is signalled
            raise CLIError("cannot check which process serves the URL without /proc: pass --pid")
        try:
            os.kill(pid, signal.SIGHUP)
        except ProcessLookupError:
            raise CLIError(f"no process {pid} here: run `vlgate reload` on the gateway's machine") from None
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
                       description="Send SIGHUP to the gateway serving --url (only to a process that holds the "
                                   "socket listening there) and wait until it reports the new config, or why it "
                                   "refused it (the old config then stays).")
    p.add_argument("--url", default="http://127.0.0.1:8000", help="gateway base URL (default: %(default)s)")
    p.add_argument("--pid", type=int, help="the gateway's process id (default: the one /ready reports); it must "
                   "hold the URL's listening socket too")
    p.add_argument("--api-key", default=os.environ.get("VLGATE_API_KEY"),
                   help="an admin key, when the gateway has keys (default: $VLGATE_API_KEY)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the answer (default: %(default)s)")
    p.set_defaults(func=cmd_reload)
