"""SSRF: refused URLs never reach a socket. A listener the test controls counts accepted connections."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator

import pytest
from aiohttp import web

from support.images import CountingListener, body_with, run, settings
from vlgate.images import ImageError, ImageNormalizer
from vlgate.images.settings import FetchSettings
from vlgate.images.ssrf import BlockedTarget, blocked_reason, check_url


@pytest.fixture
def listener() -> Iterator[CountingListener]:
    lst = CountingListener("127.0.0.1")
    yield lst
    lst.close()


def _v6_listener() -> CountingListener | None:
    try:
        return CountingListener("::1")
    except OSError:
        return None


async def _fetch(url: str, **fetch: object) -> ImageError:
    n = ImageNormalizer(settings(fetch=fetch))
    try:
        await n.normalize_body(body_with(url))
    except ImageError as e:
        return e
    finally:
        await n.aclose()
    raise AssertionError(f"{url} was fetched")


def test_the_listener_is_reachable_when_allowed(listener: CountingListener) -> None:
    """Control: with private networks allowed the same URL is fetched, so a count of 0 below means refused."""

    async def go() -> list:
        n = ImageNormalizer(settings(fetch={"allow_private_networks": True}))
        try:
            return await n.normalize_body(body_with(f"http://127.0.0.1:{listener.port}/x.png"))
        finally:
            await n.aclose()

    infos = run(go())
    assert infos[0].orig_width == 40 and listener.accepted == 1


def test_refused_targets_make_no_connection(listener: CountingListener) -> None:
    p = listener.port
    v6 = _v6_listener()
    urls = [
        f"http://127.0.0.1:{p}/a.png",
        f"http://localhost:{p}/a.png",  # a name resolving to loopback
        f"http://LocalHost:{p}/a.png",
        f"http://2130706433:{p}/a.png",  # decimal 127.0.0.1
        f"http://0177.0.0.1:{p}/a.png",  # octal
        f"http://0x7f.0.0.1:{p}/a.png",  # hex
        f"http://127.1:{p}/a.png",  # short form
        f"http://0.0.0.0:{p}/a.png",  # Linux routes it to loopback
        f"http://0:{p}/a.png",
        f"http://[::ffff:127.0.0.1]:{p}/a.png",  # IPv4-mapped IPv6
        f"http://[::ffff:7f00:1]:{p}/a.png",
        f"http://[::1]:{v6.port if v6 else p}/a.png",
        f"http://[::]:{p}/a.png",
        f"http://[::127.0.0.1]:{p}/a.png",  # IPv4-compatible
        "http://169.254.169.254/latest/meta-data/",  # cloud metadata
        "http://[fe80::1]/a.png",
        "http://10.0.0.1/a.png",
        "http://192.168.1.1/a.png",
        "http://172.16.0.1/a.png",
        "http://100.64.0.1/a.png",  # CGNAT
        "http://224.0.0.1/a.png",  # multicast
        "http://[ff02::1]/a.png",
        "http://[fc00::1]/a.png",
        "http://[64:ff9b::7f00:1]/a.png",  # NAT64 of loopback
        "http://[2002:7f00:1::]/a.png",  # 6to4 of loopback
        f"http://user:pw@example.com:{p}/a.png",
    ]
    try:
        for url in urls:
            e = run(_fetch(url))
            assert e.status == 400 and e.code == "image_url_refused", (url, e.message)
            assert e.param == "messages[1].content[0].image_url"
        assert listener.accepted == 0
        assert v6 is None or v6.accepted == 0
    finally:
        if v6:
            v6.close()


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/a.png", "gopher://x/", "javascript:alert(1)",
                                 "//example.com/a.png", "a.png", "dict://127.0.0.1:11211/"])
def test_other_schemes_400(url: str) -> None:
    e = run(_fetch(url))
    assert e.status == 400 and "scheme" in e.message


def test_redirect_to_loopback_is_refused(listener: CountingListener) -> None:
    """A server we allow (127.0.0.2 via allowed_networks) redirects to loopback: that hop is re-checked."""

    async def go() -> tuple[ImageError, int]:
        hits = 0

        async def redirect(_req: web.Request) -> web.Response:
            nonlocal hits
            hits += 1
            raise web.HTTPFound(f"http://127.0.0.1:{listener.port}/secret.png")

        app = web.Application()
        app.router.add_get("/r", redirect)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.2", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        try:
            e = await _fetch(f"http://127.0.0.2:{port}/r", allowed_networks=["127.0.0.2/32"])
        finally:
            await runner.cleanup()
        return e, hits

    e, hits = run(go())
    assert hits == 1  # the allowed server was reached...
    assert "127.0.0.1" in e.message and "loopback" in e.message
    assert listener.accepted == 0  # ...the redirect target never was


def test_domain_allowlist_and_fetch_switch(listener: CountingListener) -> None:
    e = run(_fetch(f"http://localhost:{listener.port}/a.png", allowed_domains=["images.example.com"],
                   allow_private_networks=True))
    assert "allowed domains" in e.message
    e = run(_fetch(f"http://127.0.0.1:{listener.port}/a.png", enabled=False, allow_private_networks=True))
    assert "data: URL" in e.message
    assert listener.accepted == 0


def test_check_url_unit() -> None:
    s = FetchSettings()
    assert str(check_url("https://images.example.com/a.png?x=1", s)) == "https://images.example.com/a.png?x=1"
    assert check_url("http://8.8.8.8/a.png", s).host == "8.8.8.8"
    allow = FetchSettings(allowed_domains=["Example.com"])
    assert check_url("https://cdn.example.com/a.png", allow)
    for bad in ("https://example.com.evil.net/a.png", "https://notexample.com/a.png"):
        with pytest.raises(BlockedTarget):
            check_url(bad, allow)
    assert blocked_reason(ipaddress.ip_address("8.8.8.8"), s) is None
    assert blocked_reason(ipaddress.ip_address("2606:4700:4700::1111"), s) is None
    assert blocked_reason(ipaddress.ip_address("127.0.0.1"), FetchSettings(allow_private_networks=True)) is None
    assert blocked_reason(ipaddress.ip_address("::ffff:8.8.8.8"), s) == "IPv4-mapped IPv6"


def test_resolver_checks_every_address() -> None:
    """A name with one public and one private address is refused as a whole (no partial trust)."""
    from vlgate.images.ssrf import GuardedResolver

    async def go() -> str:
        r = GuardedResolver(FetchSettings())
        loop = __import__("asyncio").get_running_loop()

        async def fake_getaddrinfo(*_a: object, **_k: object) -> list:
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", 80)),
                    (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.1.2.3", 80))]

        loop.getaddrinfo = fake_getaddrinfo  # type: ignore[method-assign]
        try:
            await r.resolve("mixed.example", 80)
        except BlockedTarget as e:
            return str(e)
        return "resolved"

    assert "10.1.2.3" in run(go())
