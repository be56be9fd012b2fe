"""DNS discovery against a real DNS server on a loopback port, with real llama-servers behind the names.

Two llama-servers listen on the same port of 127.0.0.2 and 127.0.0.3 (as two pods of a headless
Service would); the test edits the zone while requests run and watches backends join and drain.
"""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import httpx
import pytest

from support.dnsserver import dns_server
from support.gateway_process import GatewayProcess
from support.llama import LlamaServer
from support.load import Load
from support.wait import wait_until
from vlgate.config import ConfigError, DiscoveryConfig, parse_config
from vlgate.gateway.fleet.discovery import make_resolver, nameserver, resolve

HOSTS = ("127.0.0.2", "127.0.0.3")


def test_config_shape() -> None:
    cfg = parse_config({"backends": [{"dns": "vlgate-nodes.ai.svc.cluster.local", "port": 8000},
                                     {"url": "http://10.0.0.5:8081"}],
                        "gateway": {"discovery": {"interval_s": 2, "nameservers": ["10.96.0.10"]}}})
    assert cfg.backends[0].dns and cfg.backends[0].port == 8000 and cfg.gateway.discovery.interval_s == 2
    with pytest.raises(ConfigError, match="dns needs a port"):
        parse_config({"backends": [{"dns": "nodes"}]})
    with pytest.raises(ConfigError, match="either url or dns"):
        parse_config({"backends": [{"dns": "nodes", "port": 1, "url": "http://a:1"}]})


def test_nameserver_spec() -> None:
    assert (nameserver("127.0.0.1:5353").address, nameserver("127.0.0.1:5353").port) == ("127.0.0.1", 5353)
    assert (nameserver("[::1]:53").address, nameserver("::1").port) == ("::1", 53)
    with pytest.raises(ValueError):
        nameserver("dns.example:53")


def test_resolve_answers_nxdomain_and_silence() -> None:
    async def lookups(ns: str) -> tuple[set[str] | None, ...]:
        resolver = make_resolver(DiscoveryConfig(nameservers=[ns], timeout_s=0.5))
        return await resolve(resolver, "nodes.test"), await resolve(resolver, "gone.test")

    with dns_server() as (zone, ns):
        zone.set("nodes.test", ["127.0.0.2", "127.0.0.3", "::1"])
        found, gone = asyncio.run(lookups(ns))
    assert found == {"127.0.0.2", "127.0.0.3", "::1"}
    assert gone == set()  # NXDOMAIN: no nodes (every one drains)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as mute:  # a server that never answers
        mute.bind(("127.0.0.1", 0))
        started = time.monotonic()
        assert asyncio.run(lookups(f"127.0.0.1:{mute.getsockname()[1]}")) == (None, None)  # keep the last addresses
        assert time.monotonic() - started < 3


# ------------------------------------------------------------------------- end to end

def common_free_port() -> int:
    """A port free on every address in HOSTS (the pods' shared container port)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind((HOSTS[0], 0))
            port = s.getsockname()[1]
        try:
            for host in HOSTS[1:]:
                with socket.socket() as s:
                    s.bind((host, port))
            return port
        except OSError:
            continue
    raise AssertionError("no common free port")


class HostedLlama(LlamaServer):
    """A llama-server on a given loopback address and port (a pod IP + container port)."""

    def __init__(self, *args: object, host: str, port: int, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.host, self.port = host, port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def args(self) -> list[str]:
        cmd = super().args()
        cmd[cmd.index("--host") + 1] = self.host
        return cmd

    def start(self, attempts: int = 1) -> HostedLlama:
        self._spawn()
        self._wait_healthy()
        return self


@pytest.fixture
def pods(llama_server_bin: Path, tiny_model, tmp_path: Path):
    port = common_free_port()
    servers = [HostedLlama(llama_server_bin, tiny_model.model, slots=2, ctx=2048, host=h, port=port,
                           log_dir=tmp_path / h) for h in HOSTS]
    try:
        yield [s.start() for s in servers], port
    finally:
        for s in servers:
            s.stop()


def by_url(gw: GatewayProcess) -> dict[str, dict]:
    return {b["url"]: b for b in gw.ready()["backends"]}


def prompt_tokens(url: str) -> float:
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith("llamacpp:prompt_tokens_total"):
            return float(line.split()[1])
    raise AssertionError("no llamacpp:prompt_tokens_total")


@pytest.mark.slow
def test_addresses_join_and_drain_while_requests_run(pods, tmp_path: Path) -> None:
    (a, b), port = pods
    with dns_server() as (zone, ns):
        zone.set("nodes.test", [a.host])
        gw = GatewayProcess({"backends": [{"dns": "nodes.test", "port": port, "name": "nodes"}],
                             "gateway": {"discovery": {"interval_s": 0.5, "nameservers": [ns]},
                                         "health": {"interval_s": 0.5}}}, tmp_path).start()
        try:
            gw.wait_ready(backends=1)
            assert list(by_url(gw)) == [a.url] and by_url(gw)[a.url]["name"] == f"nodes/{a.host}"
            with Load(gw.url) as load:
                wait_until(lambda: load.ok >= 4, 30, "first answers")
                zone.set("nodes.test", [a.host, b.host])  # a pod becomes ready
                joined = wait_until(lambda: by_url(gw).get(b.url, {}).get("state") == "ready", 10, "b ready")
                wait_until(lambda: by_url(gw)[b.url]["served"] > 0, 10, "b serving")
                wait_until(lambda: by_url(gw)[a.url]["in_flight"] > 0, 10, "requests running on a")
                zone.set("nodes.test", [b.host])  # a's pod goes away while it serves requests

                def a_leaving() -> bool:
                    info = by_url(gw).get(a.url)
                    return info is None or info["state"] == "draining"

                left = wait_until(a_leaving, 10, "a draining")
                wait_until(lambda: a.url not in by_url(gw), 30, "a gone after its in-flight work")
                before = prompt_tokens(a.url)
                served_b = by_url(gw)[b.url]["served"]
                wait_until(lambda: by_url(gw)[b.url]["served"] >= served_b + 4, 30, "b serving alone")
                assert prompt_tokens(a.url) == before  # nothing new reached the drained node
            assert load.failed == [] and load.ok > 8
            print(f"\n[discovery] join: {joined:.2f}s from the DNS change to the new node ready; leave: {left:.2f}s "
                  f"to draining (its requests then running finished there); interval_s 0.5; "
                  f"{load.ok} requests, 0 failed")
        finally:
            gw.stop()
