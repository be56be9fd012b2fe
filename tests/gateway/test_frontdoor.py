"""The front door: JSON only (415), header limits (431), slowloris (408), numeric ranges llama-server would
wrap (400 naming the field), backend errors completed to OpenAI's shape with `x-should-retry: false`."""

from __future__ import annotations

import socket
import time

import httpx
import openai
import pytest

from support.fakebackend import FakeBackend
from support.gateway_process import GatewayProcess
from support.rawhttp import raw_request

JSON = {"Content-Type": "application/json"}
HELLO = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory):
    fb = FakeBackend().start()
    gw = GatewayProcess({"backends": [{"url": fb.url}],
                         "gateway": {"limits": {"max_header_bytes": 4096, "max_headers": 20,
                                                "header_timeout_s": 1.0, "max_connections": 30}}},
                        tmp_path_factory.mktemp("frontdoor")).start()
    gw.wait_ready()
    yield gw, fb
    gw.stop()
    fb.stop()


def assert_error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) >= {"message", "type", "param", "code"} and err["message"]
    return err


@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; b=x", None])
def test_post_bodies_must_be_json(gw, ctype: str | None) -> None:
    """A web page can make a browser POST these cross-origin without a preflight: never acted on."""
    gateway, fb = gw
    before = len(fb.chat_requests())
    headers = {"Content-Type": ctype} if ctype else {}
    r = httpx.post(gateway.url + "/v1/chat/completions", content=b'{"messages":[{"role":"user","content":"x"}]}',
                   headers=headers)
    err = assert_error(r, 415)
    assert err["code"] == "unsupported_media_type" and err["param"] == "Content-Type"
    assert len(fb.chat_requests()) == before
    ok = httpx.post(gateway.url + "/v1/chat/completions", json=HELLO,
                    headers={"Content-Type": "application/json; charset=utf-8"})
    assert ok.status_code == 200



def test_oversized_headers_are_431(gw) -> None:
    gateway, _ = gw
    big = raw_request(gateway.port,
                      b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 64 * 1024 + b"\r\n\r\n")
    assert big.startswith(b"HTTP/1.1 431"), big[:200]
    assert b"x-should-retry: false" in big and b'"code":"request_header_fields_too_large"' in big
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(40))
    r = raw_request(gateway.port, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n" + many + b"\r\n")
    assert r.startswith(b"HTTP/1.1 431") and b"request headers" in r
    assert httpx.get(gateway.url + "/health").status_code == 200  # and the gateway keeps serving


def test_slow_headers_are_cut_off(gw) -> None:
    """Slowloris: a byte now and then keeps no connection open past the header deadline (1 s here)."""
    gateway, _ = gw
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        started = time.monotonic()
        closed_after = None
        for _ in range(50):  # at most ~5 s of trickling
            try:
                s.sendall(b"X-Slow: y\r\n")
                s.settimeout(0.1)
                if s.recv(4096) == b"":
                    closed_after = time.monotonic() - started
                    break
            except TimeoutError:
                continue
            except OSError:  # reset: the gateway closed while we were still sending
                closed_after = time.monotonic() - started
                break
    assert closed_after is not None and 0.8 < closed_after < 3.0, closed_after
    # a client that stops mid-headers gets a clean 408
    answer = raw_request(gateway.port, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    assert answer.startswith(b"HTTP/1.1 408") and b"did not arrive within 1s" in answer, answer[:200]
    # a normal keep-alive client is not affected by the deadline between its requests
    with httpx.Client() as client:
        assert client.get(gateway.url + "/health").status_code == 200
        time.sleep(1.5)
        assert client.get(gateway.url + "/health").status_code == 200


@pytest.mark.parametrize(("field", "value"), [
    ("max_tokens", 2**63), ("max_tokens", 2**31), ("max_completion_tokens", 2**40), ("n", 2),
    ("seed", 2**32), ("top_k", -5), ("n_probs", 10**6), ("id_slot", 0), ("logit_bias", {"1": 1e9}),
])
def test_numbers_llama_server_would_wrap_are_400(gw, field: str, value: object) -> None:
    gateway, fb = gw
    before = len(fb.chat_requests())
    r = httpx.post(gateway.url + "/v1/chat/completions", json={**HELLO, field: value})
    err = assert_error(r, 400)
    assert err["param"].split(".")[0] == field, err
    assert len(fb.chat_requests()) == before


def test_nan_and_infinity_are_invalid_json(gw) -> None:
    gateway, _ = gw
    for literal in (b"NaN", b"Infinity", b"-Infinity", b"1e999999"):
        r = httpx.post(gateway.url + "/v1/chat/completions", headers=JSON,
                       content=b'{"messages":[{"role":"user","content":"x"}],"temperature":' + literal + b"}")
        assert_error(r, 400)


@pytest.mark.parametrize(("status", "body", "code"), [
    (500, b'{"error":{"code":500,"message":"boom","type":"server_error"}}', "backend_error"),
    (502, b"<html>bad gateway</html>", None),
    (504, b'{"error":{"code":504,"message":"upstream timed out","type":"unavailable_error"}}', "backend_unavailable"),
])
def test_backend_errors_are_complete_and_final(tmp_path, status: int, body: bytes, code: str | None) -> None:
    fb = FakeBackend(mode="status", status=status, status_body=body).start()
    gateway = GatewayProcess({"backends": [{"url": fb.url}]}, tmp_path).start()
    try:
        gateway.wait_ready()
        r = httpx.post(gateway.url + "/v1/chat/completions", json=HELLO)
        err = assert_error(r, status)
        assert r.headers["x-should-retry"] == "false"
        assert err["code"] == code and isinstance(err["type"], str)
        # the openai SDK takes the header at its word: one request, not 1 + 2 retries
        seen = len(fb.chat_requests())
        sdk = openai.OpenAI(base_url=gateway.url + "/v1", api_key="x", max_retries=2)
        with pytest.raises(openai.APIStatusError):
            sdk.chat.completions.create(model="youtu-vl", **HELLO)  # type: ignore[arg-type]
        assert len(fb.chat_requests()) == seen + 1
    finally:
        gateway.stop()
        fb.stop()


def test_open_connections_are_capped(gw) -> None:
    """Idle sockets cannot pile up without bound: past the cap a new connection gets 503 and is closed."""
    gateway, _ = gw
    held = []
    try:
        for _ in range(30):
            s = socket.create_connection(("127.0.0.1", gateway.port), timeout=5)
            held.append(s)
        time.sleep(0.2)
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as extra:
            answer = extra.recv(4096)  # answered at once, before any request is read
        assert answer.startswith(b"HTTP/1.1 503") and b"retry-after: 1" in answer, answer[:200]
        assert b'"type":"service_unavailable"' in answer
    finally:
        for s in held:
            s.close()
    time.sleep(0.2)
    assert httpx.get(gateway.url + "/health").status_code == 200  # room again once they close


def test_a_backend_error_event_mid_stream_is_complete(tmp_path) -> None:
    fb = FakeBackend(mode="error_after", die_after=2).start()
    gateway = GatewayProcess({"backends": [{"url": fb.url}]}, tmp_path).start()
    try:
        gateway.wait_ready()
        sdk = openai.OpenAI(base_url=gateway.url + "/v1", api_key="x", max_retries=0)
        stream = sdk.chat.completions.create(model="youtu-vl", stream=True, **HELLO)  # type: ignore[arg-type]
        with pytest.raises(openai.APIError) as exc:
            for _ in stream:
                pass
        assert exc.value.body == {"message": "decode failed", "type": "server_error", "param": None,
                                  "code": "backend_error"}
    finally:
        gateway.stop()
        fb.stop()
