"""SSRF rules for image URLs: which URLs and which addresses the gateway may connect to.

Two checkpoints, both needed because aiohttp skips the resolver for IP-literal hosts:
- `check_url` on every URL (the first and each redirect): scheme, credentials, domain allowlist, IP literals,
  and legacy numeric hosts (`2130706433`, `0177.0.0.1`, `0x7f.1`) that libc would quietly map to an address.
- `GuardedResolver`, aiohttp's only DNS lookup: every address a name resolves to is checked, and aiohttp
  connects to exactly the addresses it returns (no second lookup, so no DNS-rebinding window).
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from typing import Any

from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from vlgate.images.settings import FetchSettings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NUMERIC_LABEL = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$", re.IGNORECASE)


class BlockedTarget(OSError):
    """A URL or address the SSRF rules refuse; an OSError so aiohttp passes it through its resolver path."""


def check_url(url: str | URL, settings: FetchSettings) -> URL:
    """Validate one URL before any connection; returns the parsed URL. Raises BlockedTarget with the reason."""
    try:
        u = url if isinstance(url, URL) else URL(url)
    except (ValueError, TypeError) as e:
        raise BlockedTarget(f"invalid URL: {e}") from None
    scheme = (u.scheme or "").lower()
    if scheme not in ("http", "https"):
        raise BlockedTarget(f"URL scheme '{scheme or '(none)'}' is not allowed: use https://, http:// or a data: URL")
    if u.user is not None or u.password is not None:
        raise BlockedTarget("URLs with credentials are not allowed")
    host = (u.raw_host or "").lower().rstrip(".")
    if not host:
        raise BlockedTarget("URL has no host")
    ip = _ip_literal(host)
    if ip is None and _looks_numeric(host):
        raise BlockedTarget(f"host '{host}' is a non-canonical numeric address")
    if settings.allowed_domains and not _domain_allowed(host, settings.allowed_domains):
        raise BlockedTarget(f"host '{host}' is not in the allowed domains")
    if ip is not None:
        reason = blocked_reason(ip, settings)
        if reason:
            raise BlockedTarget(f"address {ip} is not allowed ({reason})")
    return u


def blocked_reason(ip: IPAddress, settings: FetchSettings) -> str | None:
    """Why this address may not be fetched from, or None when it may."""
    if any(ip in net for net in settings.allowed_networks if net.version == ip.version):
        return None
    if settings.allow_private_networks:
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return "IPv4-mapped IPv6"
        embedded = _embedded_v4(ip)
        if embedded is not None and _v4_reason(embedded):
            return "IPv6 embedding a private IPv4 address"
        if ip.is_loopback:
            return "loopback"
        if ip.is_unspecified:
            return "unspecified"
        if ip.is_link_local or ip.is_site_local:
            return "link-local"
        if ip.is_multicast:
            return "multicast"
        if ip.is_private or not ip.is_global:
            return "private or reserved"
        return None
    return _v4_reason(ip)


def _v4_reason(ip: ipaddress.IPv4Address) -> str | None:
    if ip.is_loopback:
        return "loopback"
    if ip.is_unspecified or ip in ipaddress.ip_network("0.0.0.0/8"):
        return "unspecified"
    if ip.is_link_local:
        return "link-local (cloud metadata)"
    if ip in _CGNAT:
        return "carrier-grade NAT"
    if ip.is_multicast:
        return "multicast"
    if ip.is_private or ip.is_reserved or not ip.is_global:
        return "private or reserved"
    return None


def _embedded_v4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if int(ip) >> 32 == 0:  # deprecated IPv4-compatible ::a.b.c.d
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def _ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def _looks_numeric(host: str) -> bool:
    """WHATWG URL parsing treats a host whose last label is numeric as IPv4 (inet_aton accepts octal/hex/short)."""
    labels = [label for label in host.split(".") if label]
    return bool(labels) and _NUMERIC_LABEL.match(labels[-1]) is not None


def _domain_allowed(host: str, allowed: list[str]) -> bool:
    return any(host == d or host.endswith("." + d) for d in allowed)


class GuardedResolver(AbstractResolver):
    """Resolve with getaddrinfo and refuse the name if any of its addresses is refused."""

    def __init__(self, settings: FetchSettings) -> None:
        self._settings = settings

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        name = host.lower().rstrip(".")
        if _looks_numeric(name):
            raise BlockedTarget(f"host '{name}' is a non-canonical numeric address")
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, family=family)
        results: list[ResolveResult] = []
        for fam, _, proto, _, sockaddr in infos:
            if not isinstance(sockaddr[0], str):  # not an IP family's (host, port, ...): refuse, don't guess
                raise BlockedTarget(f"host '{name}' resolves to a non-IP address")
            ip = ipaddress.ip_address(sockaddr[0].split("%", 1)[0])
            reason = blocked_reason(ip, self._settings)
            if reason:
                raise BlockedTarget(f"host '{name}' resolves to {ip}, which is not allowed ({reason})")
            results.append(_result(host, str(ip), port, fam, proto))
        if not results:
            raise BlockedTarget(f"host '{name}' has no addresses")
        return results

    async def close(self) -> None:
        return None


def _result(hostname: str, ip: str, port: int, family: int, proto: int) -> Any:
    return {"hostname": hostname, "host": ip, "port": port, "family": family, "proto": proto,
            "flags": socket.AI_NUMERICHOST}
