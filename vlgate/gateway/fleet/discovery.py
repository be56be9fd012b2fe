"""DNS discovery: a backend entry `{dns: NAME, port: N}` is every address NAME resolves to.

NAME is typically a Kubernetes headless Service (one A/AAAA record per ready pod) or a Consul name.
It is re-resolved every `gateway.discovery.interval_s`: a new address joins (and takes work after
its first healthy check), a vanished one drains and leaves. A lookup that fails (timeout, no
server) keeps the last addresses: a DNS hiccup must not empty the fleet. An NXDOMAIN or an empty
answer does mean "no nodes". Lookups use dnspython, pointed at `gateway.discovery.nameservers`
or the system's /etc/resolv.conf (with its search domains, so short Service names work).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.resolver

from vlgate.config import BackendConfig, Config, DiscoveryConfig
from vlgate.gateway.fleet.membership import Membership, backend_from

log = logging.getLogger("vlgate.gateway.fleet.discovery")


def nameserver(spec: str) -> dns.nameserver.Do53Nameserver:
    """`10.0.0.10`, `127.0.0.1:5353`, `[::1]:5353` or `::1` -> a UDP/TCP port-53-style nameserver."""
    host, port = spec.strip(), 53
    if host.startswith("["):
        host, _, rest = host[1:].partition("]")
        port = int(rest.lstrip(":") or 53)
    elif host.count(":") == 1:
        host, _, p = host.partition(":")
        port = int(p)
    ipaddress.ip_address(host)  # a name here would need DNS to find DNS
    return dns.nameserver.Do53Nameserver(host, port)


def make_resolver(settings: DiscoveryConfig) -> dns.asyncresolver.Resolver:
    resolver = dns.asyncresolver.Resolver(configure=not settings.nameservers)
    if settings.nameservers:
        resolver.nameservers = [nameserver(s) for s in settings.nameservers]
    resolver.lifetime = settings.timeout_s
    resolver.timeout = settings.timeout_s
    return resolver


async def resolve(resolver: dns.asyncresolver.Resolver, name: str) -> set[str] | None:
    """Every A and AAAA address of `name`; empty when it does not exist; None when the lookup failed."""
    found: set[str] = set()
    for rdtype in ("A", "AAAA"):
        try:
            answer = await resolver.resolve(name, rdtype, search=True)
        except dns.resolver.NXDOMAIN:
            return found
        except dns.resolver.NoAnswer:
            continue
        except (dns.exception.Timeout, dns.resolver.NoNameservers, OSError) as exc:
            log.warning("DNS lookup of %s (%s) failed, keeping the last addresses: %s", name, rdtype, exc)
            return None
        found.update(r.to_text() for r in answer)
    return found


def group_of(entry: BackendConfig) -> str:
    return f"dns:{entry.dns}:{entry.port}"


def address_url(entry: BackendConfig, address: str) -> str:
    host = f"[{address}]" if ":" in address else address
    return f"{entry.scheme}://{host}:{entry.port}"


class DnsDiscovery:
    def __init__(self, config: Config, members: Membership) -> None:
        self.members = members
        self.entries: list[BackendConfig] = []
        self.configure(config)
        self._task: asyncio.Task[None] | None = None
        self.lookups = 0
        self.failures = 0

    def configure(self, config: Config) -> None:
        """Take the dns entries and settings of a (re)loaded config; entries dropped from it drain on the next round."""
        self.settings = config.gateway.discovery
        self.default_slots = config.gateway.default_slots
        old = {group_of(e) for e in self.entries}
        self.entries = [e for e in config.backends if e.dns is not None]
        self.resolver = make_resolver(self.settings)
        for group in old - {group_of(e) for e in self.entries}:
            self.members.sync(group, [])

    async def refresh(self) -> None:
        """One round: resolve every dns entry and make its group match."""
        await asyncio.gather(*(self._refresh_one(e) for e in self.entries))

    async def _refresh_one(self, entry: BackendConfig) -> None:
        assert entry.dns is not None
        self.lookups += 1
        addresses = await resolve(self.resolver, entry.dns)
        if addresses is None:
            self.failures += 1
            return
        base = entry.name or entry.dns
        wanted = [backend_from(entry, url=address_url(entry, a), name=f"{base}/{a}", default_slots=self.default_slots)
                  for a in sorted(addresses)]
        added, removed = self.members.sync(group_of(entry), wanted)
        if added or removed:
            log.info("%s: %d address(es); joined %s, leaving %s",
                     entry.dns, len(addresses), added or "-", removed or "-")

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="dns-discovery")

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.interval_s)
            try:
                await self.refresh()
            except Exception:  # never let one odd answer stop discovery
                log.exception("DNS discovery round failed")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
