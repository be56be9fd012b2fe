"""A real DNS server on a loopback port whose records a test edits while the gateway resolves them.

dnslib's UDP/TCP server with a mutable zone: `zone.set("nodes.test", ["127.0.0.2"])`. A name not in
the zone answers NXDOMAIN, like a headless Service with no ready pods.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from dnslib import AAAA, QTYPE, RCODE, RR, A, DNSRecord
from dnslib.server import BaseResolver, DNSHandler, DNSLogger, DNSServer


class Zone(BaseResolver):
    def __init__(self) -> None:
        self._records: dict[str, list[str]] = {}
        self._lock = threading.Lock()
        self.queries = 0

    def set(self, name: str, addresses: list[str]) -> None:
        with self._lock:
            self._records[name.rstrip(".").lower()] = list(addresses)

    def resolve(self, request: DNSRecord, handler: DNSHandler) -> DNSRecord:
        reply = request.reply()
        name = str(request.q.qname).rstrip(".").lower()
        with self._lock:
            self.queries += 1
            addresses = self._records.get(name)
        if addresses is None:
            reply.header.rcode = RCODE.NXDOMAIN
            return reply
        qtype = QTYPE[request.q.qtype]
        for address in addresses:
            if qtype == "A" and ":" not in address:
                reply.add_answer(RR(name, QTYPE.A, rdata=A(address), ttl=1))
            elif qtype == "AAAA" and ":" in address:
                reply.add_answer(RR(name, QTYPE.AAAA, rdata=AAAA(address), ttl=1))
        return reply


@contextmanager
def dns_server() -> Iterator[tuple[Zone, str]]:
    """A zone and the `127.0.0.1:PORT` its server answers on (UDP, free port)."""
    zone = Zone()
    server = DNSServer(zone, address="127.0.0.1", port=0, logger=DNSLogger("-request,-reply,-truncated,-error"))
    server.start_thread()
    try:
        yield zone, f"127.0.0.1:{server.server.server_address[1]}"
    finally:
        server.stop()
        server.server.server_close()
