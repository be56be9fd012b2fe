"""Routes are declared data, and the one endpoint applies what each declares: aliases are the same route,
utility routes take no backend slot (they are answered while generations hold every slot)."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import pytest

from support.gateway_process import GatewayProcess
from support.wait import wait_until
from vlgate.gateway.app import API_ROUTES
from vlgate.gateway.endpoint.route import UTILITY


def test_every_route_declares_its_policies() -> None:
    """Routes are data: aliases are the same route (one label), utilities charge no tokens."""
    by_path = {p: r for r in API_ROUTES for p in r.paths}
    assert by_path["/chat/completions"] is by_path["/v1/chat/completions"]
    assert by_path["/responses"] is by_path["/v1/responses"]
    assert by_path["/v1/messages"].dialect.name == "anthropic"
    utilities = ("/tokenize", "/detokenize", "/apply-template", "/v1/chat/completions/input_tokens",
                 "/v1/responses/input_tokens", "/v1/messages/count_tokens")
    assert all(by_path[p].charges is UTILITY and not by_path[p].takes_slot for p in utilities)
    assert all(r.takes_slot for r in API_ROUTES if r.path not in utilities)
    assert all(r.drains for r in API_ROUTES)


@pytest.mark.slow
def test_utility_routes_are_answered_while_every_slot_is_busy(llama_server, tmp_path: Path) -> None:
    server = llama_server(slots=1, ctx=2048)
    gw = GatewayProcess({"backends": [{"url": server.url}]}, tmp_path).start()
    try:
        gw.wait_ready()
        body = {"model": "youtu-vl", "max_tokens": 1500, "stream": True,
                "messages": [{"role": "user", "content": "a long story"}]}
        done = threading.Event()

        def generate() -> None:
            with httpx.stream("POST", gw.url + "/v1/chat/completions", json=body, timeout=120) as r:
                for _ in r.iter_lines():
                    pass
            done.set()

        threads = [threading.Thread(target=generate) for _ in range(2)]
        for t in threads:
            t.start()
        wait_until(lambda: (r := gw.ready())["in_flight"] == 1 and r["queued"] == 1, 20, "the slot taken, one queued")
        tok = httpx.post(gw.url + "/tokenize", json={"content": "hello world"}, timeout=10)
        count = httpx.post(gw.url + "/v1/chat/completions/input_tokens",
                           json={"model": "youtu-vl", "messages": [{"role": "user", "content": "hi"}]}, timeout=10)
        assert not done.is_set()  # answered while the generation still held the only slot
        assert tok.status_code == 200 and tok.json()["tokens"], tok.text
        assert count.status_code == 200, count.text
        assert gw.ready()["queued"] == 1  # and they did not queue
        for t in threads:
            t.join(120)
    finally:
        gw.stop()
