"""Which `Host` and `Origin` values the gateway serves: the defence against DNS rebinding and CSRF.

A page on evil.example can make the operator's browser resolve its own name to 127.0.0.1 (DNS
rebinding) and then read the loopback gateway's answers as same-origin; the browser still sends
`Host: evil.example`. So a loopback bind serves only loopback `Host` values (as Ollama, Jupyter and
Vite do) plus the operator's `gateway.allowed_hosts`. A non-loopback bind checks `Host` only when
`allowed_hosts` is set (a gateway reached by many names would otherwise need them all listed).

Pure functions, no I/O: the front door (frontdoor/protocol.py) calls `HostPolicy.allows` once per
request, before any route runs; `/admin` calls `origin_allowed` (a cross-site form or fetch POST).
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

_LOOPBACK_NAMES = frozenset({"localhost", "ip6-localhost", "ip6-loopback"})


def _loopback_address(name: str) -> bool:
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def is_loopback_name(name: str) -> bool:
    """localhost, 127.0.0.0/8, ::1 (and ::ffff:127.x): names only this machine can be reached by."""
    name = name.lower().rstrip(".")
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    return name in _LOOPBACK_NAMES or _loopback_address(name)


def split_host(value: str) -> tuple[str, int | None] | None:
    """`Host` (or an authority) as (lowercase name, port); None when malformed. `[v6]:port` keeps no brackets."""
    value = value.strip().lower()
    if not value or any(c in value for c in " \t/\\@?#"):
        return None
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        name, rest = value[1:end], value[end + 1:]
        if not _is_v6(name):
            return None
    else:
        name, sep, port_text = value.rpartition(":")
        if not sep:
            name, rest = value, ""
        elif ":" in name:  # an unbracketed v6 address: not a valid Host
            return None
        else:
            rest = ":" + port_text
    port = None
    if rest:
        if not rest.startswith(":") or not rest[1:].isdigit() or len(rest) > 6:
            return None
        port = int(rest[1:])
        if port > 65535:
            return None
    name = name.rstrip(".")
    return (name, port) if name else None


def _is_v6(name: str) -> bool:
    try:
        return ipaddress.ip_address(name).version == 6
    except ValueError:
        return False


def _listed(name: str, allowed: Sequence[str]) -> bool:
    """`name` is an allowlist entry, or under a `.example.com` entry."""
    for entry in allowed:
        if entry.startswith("."):
            if name == entry[1:] or name.endswith(entry):
                return True
        elif name == entry:
            return True
    return False


@dataclass(frozen=True, slots=True)
class HostPolicy:
    """What `Host` a listener serves: `check` off serves any; else loopback names and `allowed`."""

    check: bool
    allowed: tuple[str, ...] = ()

    @classmethod
    def for_bind(cls, bind_host: str, allowed_hosts: Sequence[str]) -> HostPolicy:
        """Loopback binds always check; others only when the operator gave names; '*' never checks."""
        allowed = tuple(h.lower() for h in allowed_hosts)
        if "*" in allowed:
            return cls(False)
        return cls(is_loopback_name(bind_host) or bool(allowed), allowed)

    def allows(self, host: bytes | None) -> bool:
        """Whether a request with this `Host` header value (None: absent or repeated) is served."""
        if not self.check:
            return True
        return host is not None and _host_ok(host, self.allowed)


@functools.lru_cache(maxsize=256)  # parsing costs ~10 us; a client sends the same Host again and again
def _host_ok(host: bytes, allowed: tuple[str, ...]) -> bool:
    parsed = split_host(host.decode("latin-1"))
    return parsed is not None and (is_loopback_name(parsed[0]) or _listed(parsed[0], allowed))


def _default_port(scheme: str) -> int | None:
    return {"http": 80, "https": 443}.get(scheme)


def origin_allowed(origin: str | None, host: str | None, allowed: Sequence[str]) -> bool:
    """A browser's `Origin` on a state-changing request: absent (curl, the CLI) or the request's own
    origin (scheme aside: a TLS proxy may sit in front) or an allowlisted name. `null` (a sandboxed
    frame, a file) and any other site are foreign."""
    if origin is None:
        return True
    try:
        parts = urlsplit(origin.strip())
        origin_port = parts.port or _default_port(parts.scheme)
    except ValueError:
        return False
    name = (parts.hostname or "").rstrip(".")
    if parts.scheme not in ("http", "https") or not name:
        return False
    if _listed(name, allowed):  # '*' is no name: it turns the Host check off, never this one
        return True
    own = split_host(host) if host else None
    if own is None:
        return False
    own_name, own_port = own
    # Host without a port means the scheme's default, which only the origin's scheme tells
    return own_name == name and (own_port or _default_port(parts.scheme)) == origin_port
