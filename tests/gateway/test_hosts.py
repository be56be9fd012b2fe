"""DNS rebinding and CSRF against a gateway on loopback (real `vlgate serve` processes, a fake backend).

A loopback bind serves only loopback `Host` values and `gateway.allowed_hosts` (403 `host_not_allowed`
before any route runs, nothing reaches a backend); `/admin` takes JSON only and refuses a foreign
`Origin`. The policy's pure functions are checked on their own at the end.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from support.fakebackend import FakeBackend
from support.gateway_process import GatewayProcess
from support.rawhttp import raw_request as raw
from vlgate.config import ConfigError, parse_config
from vlgate.gateway.frontdoor.hosts import HostPolicy, origin_allowed, split_host

HELLO = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
UNPARK = "/admin/backends/backend-0/unpark"  # 409 not_parked when it gets through (a `serve` backend)


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayProcess, FakeBackend]]:
    fb = FakeBackend().start()
    gw = GatewayProcess({"backends": [{"url": fb.url}],
                         "gateway": {"allowed_hosts": ["gateway.example.test", ".lan.example"]}},
                        tmp_path_factory.mktemp("hosts")).start()
    gw.wait_ready()
    yield gw, fb
    gw.stop()
    fb.stop()


def call(gw: GatewayProcess, method: str, path: str, host: str | None, **kw) -> httpx.Response:
    headers = dict(kw.pop("headers", {}))
    if host is not None:
        headers["Host"] = host
    return httpx.request(method, gw.url + path, headers=headers, timeout=10, **kw)


ROUTES = [("POST", "/v1/chat/completions", {"json": HELLO}), ("POST", "/chat/completions", {"json": HELLO}),
          ("POST", "/v1/messages", {"json": {**HELLO, "model": "youtu-vl"}}), ("GET", "/status", {}),
          ("GET", "/ready", {}), ("GET", "/v1/models", {}), ("GET", "/", {}), ("GET", "/metrics", {}),
          ("POST", UNPARK, {"json": {}}), ("GET", "/no/such/route", {})]


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "127.0.0.1.evil.example", "localhost.evil",
                                  "gateway.example.test.evil", "10.0.0.1", "[::2]:80", "localhost:x", ""])
@pytest.mark.parametrize(("method", "path", "kw"), ROUTES)
def test_a_foreign_host_is_refused_on_every_route(gw, host: str, method: str, path: str, kw: dict) -> None:
    gateway, fb = gw
    before = len(fb.chat_requests())
    r = call(gateway, method, path, host, **kw)
    assert r.status_code == 403, r.text
    assert r.json() == {"error": {"message": r.json()["error"]["message"], "type": "permission_error",
                                  "param": None, "code": "host_not_allowed"}}
    assert r.headers["x-should-retry"] == "false" and r.headers["connection"] == "close"
    assert len(fb.chat_requests()) == before  # nothing reached a backend


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST:8000", "localhost.", "127.0.0.1", "127.0.0.1:1",
                                  "127.9.8.7:65535", "[::1]", "[::1]:8000", "gateway.example.test",
                                  "Gateway.Example.Test:443", "lan.example", "gpu-box.lan.example:8000"])
def test_loopback_and_allowlisted_hosts_are_served(gw, host: str) -> None:
    gateway, _ = gw
    assert call(gateway, "POST", "/v1/chat/completions", host, json=HELLO).status_code == 200
    assert call(gateway, "GET", "/status", host).status_code == 200
    assert call(gateway, "POST", UNPARK, host).json()["error"]["code"] == "not_parked"



def test_missing_repeated_host_and_pipelining(gw) -> None:
    """No Host (HTTP/1.0) or two Hosts: refused; a refused request pipelined after a good one is answered
    in order and closes the connection (the good answer is whole)."""
    gateway, _ = gw
    assert raw(gateway.port, b"GET /status HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.1 403")
    two = b"GET /status HTTP/1.1\r\nHost: localhost\r\nHost: evil.example\r\n\r\n"
    assert raw(gateway.port, two).startswith(b"HTTP/1.1 403")
    out = raw(gateway.port, b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n"
                            b"POST /v1/chat/completions HTTP/1.1\r\nHost: evil.example\r\n"
                            b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
                            b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200") and out.count(b"HTTP/1.1 ") == 2, out
    assert b'{"status":"ok"}' in out and out.rstrip().endswith(b'"code":"host_not_allowed"}}')


@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; b=x"])
def test_admin_takes_json_only(gw, ctype: str) -> None:
    gateway, _ = gw
    for body in (b"", b"a=1"):
        r = call(gateway, "POST", UNPARK, None, content=body, headers={"Content-Type": ctype})
        assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type", r.text
    r = call(gateway, "POST", UNPARK, None, content=b"x")  # a body without a type
    assert r.status_code == 415
    assert call(gateway, "POST", UNPARK, None).status_code == 409  # no body (curl -X POST): fine
    assert call(gateway, "POST", UNPARK, None, json={}).status_code == 409


@pytest.mark.parametrize("origin", ["https://evil.example", "null", "http://localhost:1234", "http://127.0.0.1",
                                    "file://", "http://evil.example:{port}", "garbage"])
def test_admin_refuses_a_foreign_origin(gw, origin: str) -> None:
    gateway, _ = gw
    r = call(gateway, "POST", UNPARK, None, json={}, headers={"Origin": origin.format(port=gateway.port)})
    assert r.status_code == 403 and r.json()["error"]["type"] == "permission_error", r.text
    assert r.json()["error"]["code"] == "origin_not_allowed"


@pytest.mark.parametrize("origin", ["http://127.0.0.1:{port}", "https://gateway.example.test",
                                    "http://x.lan.example:9"])
def test_admin_serves_its_own_and_allowlisted_origins(gw, origin: str) -> None:
    gateway, _ = gw
    r = call(gateway, "POST", UNPARK, None, json={}, headers={"Origin": origin.format(port=gateway.port)})
    assert r.status_code == 409, r.text


def test_a_non_loopback_bind_checks_host_only_when_told(tmp_path) -> None:
    fb = FakeBackend().start()
    open_gw = GatewayProcess({"backends": [{"url": fb.url}], "gateway": {"host": "0.0.0.0"}}, tmp_path)
    listed = GatewayProcess({"backends": [{"url": fb.url}],
                             "gateway": {"host": "0.0.0.0", "allowed_hosts": ["gw.example.test"]}}, tmp_path)
    star = GatewayProcess({"backends": [{"url": fb.url}], "gateway": {"allowed_hosts": ["*"]}}, tmp_path)
    try:
        for g in (open_gw, listed, star):
            g.start()
        assert call(open_gw, "GET", "/health", "anything.example").status_code == 200
        assert call(star, "GET", "/health", "anything.example").status_code == 200  # loopback, check off
        assert call(listed, "GET", "/health", "anything.example").status_code == 403
        assert call(listed, "GET", "/health", "gw.example.test:8000").status_code == 200
        assert call(listed, "GET", "/health", "localhost").status_code == 200
        assert "no Host check" in open_gw.log() and "no Host check" not in listed.log()
    finally:
        for g in (open_gw, listed, star):
            g.stop()
        fb.stop()


# -- the pure policy ---------------------------------------------------------------------------------------
def test_policy_unit() -> None:
    loop = HostPolicy.for_bind("127.0.0.1", [])
    assert loop.check and loop.allows(b"localhost:80") and loop.allows(b"[::ffff:127.0.0.1]")
    assert not loop.allows(b"evil.example") and not loop.allows(None) and not loop.allows(b"::1")
    for bind in ("localhost", "::1", "127.0.0.2"):
        assert HostPolicy.for_bind(bind, []).check
    for bind in ("0.0.0.0", "::", "", "10.1.2.3", "gw.example"):
        assert not HostPolicy.for_bind(bind, []).check
    assert HostPolicy.for_bind("0.0.0.0", ["a.example"]).check
    assert not HostPolicy.for_bind("127.0.0.1", ["*"]).check
    assert split_host("[::1]:8000") == ("::1", 8000) and split_host("A.B.:1") == ("a.b", 1)
    for bad in ("a:99999", "a:", "[::1", "a b", "a/b", "u@a", "::1", "[zz]"):
        assert split_host(bad) is None, bad
    assert origin_allowed(None, "localhost:8000", [])
    assert origin_allowed("http://localhost:8000", "localhost:8000", [])
    assert origin_allowed("http://localhost", "localhost", [])
    assert origin_allowed("http://localhost", "localhost:80", [])
    assert not origin_allowed("https://localhost", "localhost:80", [])
    assert not origin_allowed("http://localhost:8001", "localhost:8000", [])
    assert not origin_allowed("http://localhost:8000", None, [])


def test_allowed_hosts_config() -> None:
    g = parse_config({"gateway": {"allowed_hosts": ["GW.Example.", "[::1]", ".lan", "*"]}}).gateway
    assert g.allowed_hosts == ["gw.example", "::1", ".lan", "*"]
    for bad in ("http://gw.example", "gw.example:8000", "gw/x", ""):
        with pytest.raises(ConfigError, match="allowed_hosts"):
            parse_config({"gateway": {"allowed_hosts": [bad]}})
