"""Bad inputs through the real SDK and raw sockets: each a clear 4xx in OpenAI's shape, nothing reaches the
backend, and the gateway keeps serving (no 500 from our own code, nothing in its log as an exception)."""

from __future__ import annotations

import httpx
import openai
import pytest

from support.fakebackend import FakeBackend
from support.gateway_process import GatewayProcess
from support.rawhttp import raw_request as raw

JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory):
    fb = FakeBackend().start()
    gw = GatewayProcess({"backends": [{"url": fb.url}], "gateway": {"max_body_bytes": 1_000_000}},
                        tmp_path_factory.mktemp("bad")).start()
    gw.wait_ready()
    yield gw, fb
    gw.stop()
    fb.stop()
    assert "Traceback" not in gw.log(), gw.log()


BODIES = {
    "malformed": b'{"messages": [',
    "not an object": b"[1, 2, 3]",
    "lone surrogate": b'{"messages": [{"role": "user", "content": "\\ud800"}]}',
    "invalid utf-8": b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}',
    "deep nesting": b'{"messages": [{"role": "user", "content": "x"}], "metadata": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    "huge number": b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 1' + b"0" * 400 + b"}",
    "NaN": b'{"messages": [{"role": "user", "content": "x"}], "top_p": NaN}',
    "Infinity": b'{"messages": [{"role": "user", "content": "x"}], "temperature": Infinity}',
    "wrong type": b'{"messages": {"role": "user"}}',
    "null messages": b'{"messages": null}',
    "empty": b"",
}


@pytest.mark.parametrize("name", list(BODIES))
def test_bad_bodies_are_400(gw, name: str) -> None:
    gateway, fb = gw
    before = len(fb.chat_requests())
    r = httpx.post(gateway.url + "/v1/chat/completions", content=BODIES[name], headers=JSON)
    assert r.status_code == 400, (name, r.status_code, r.text)
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert len(fb.chat_requests()) == before
    assert httpx.get(gateway.url + "/health").status_code == 200


def test_wrong_types_through_the_sdk(gw) -> None:
    gateway, fb = gw
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="x", max_retries=0)
    before = len(fb.chat_requests())
    for extra in ({"max_tokens": "many"}, {"temperature": [1]}, {"stream": "yes"}, {"n": 2},
                  {"max_tokens": 2**64}, {"tools": [{"type": "web_search"}]}):
        with pytest.raises(openai.BadRequestError) as exc:
            client.chat.completions.create(model="youtu-vl", messages=[{"role": "user", "content": "x"}],
                                           extra_body=extra)
        assert exc.value.body["param"], (extra, exc.value.body)  # type: ignore[index]
    assert len(fb.chat_requests()) == before



@pytest.mark.parametrize("path", [b"/v1/../health", b"//v1/chat/completions", b"/v1/chat/completions%00",
                                  b"/v1/%2e%2e/metrics", b"/v1/chat/completions/../../slots", b"/slots",
                                  b"/props", b"/v1/chat/completions?x=" + b"%" * 10])
def test_path_tricks_never_reach_a_backend(gw, path: bytes) -> None:
    gateway, fb = gw
    before = len(fb.seen)
    body = b'{"messages": [{"role": "user", "content": "x"}]}'
    answer = raw(gateway.port, b"POST " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    status = int(answer.split(b" ", 2)[1])
    # routed, it is the chat route itself (query strings are ignored); anything else is a 4xx of ours
    assert status == 200 if path.startswith(b"/v1/chat/completions?") else 400 <= status < 500, answer[:300]
    extra = [s.path for s in fb.seen[before:] if not s.path.startswith(("/health", "/slots", "/props", "/metrics"))]
    assert extra in ([], ["/v1/chat/completions"]) and (not extra or path.startswith(b"/v1/chat/completions?"))


def test_garbage_on_the_socket_is_400(gw) -> None:
    gateway, _ = gw
    assert raw(gateway.port, b"\x16\x03\x01\x02\x00 not http at all\r\n\r\n").startswith(b"HTTP/1.1 400")
    assert raw(gateway.port, b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: -5\r\n\r\n"
               ).startswith(b"HTTP/1.1 400")
    assert httpx.get(gateway.url + "/health").status_code == 200
