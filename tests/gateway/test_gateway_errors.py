"""Bad input never reaches a backend and always gets an OpenAI-shaped 4xx; auth; limits; /metrics."""

from __future__ import annotations

import socket

import httpx
import openai
import pytest

from support.fakebackend import FakeBackend
from support.gateway_process import GatewayProcess

KEY = "sk-test-123"


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):
    fb = FakeBackend().start()
    tmp = tmp_path_factory.mktemp("gw")
    keys_file = tmp / "keys.txt"
    keys_file.write_text("# team keys\nsk-file-key\n")
    gw = GatewayProcess({"backends": [{"url": fb.url}],
                         "gateway": {"api_keys": [KEY], "api_keys_file": str(keys_file), "max_body_bytes": 100_000}},
                        tmp).start()
    gw.wait_ready()
    yield gw, fb
    gw.stop()
    fb.stop()


def auth(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}


def assert_openai_error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["message"]
    return err


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic abc"},
                                     {"Authorization": "Bearer"}])
def test_missing_or_wrong_key_is_401(setup, headers) -> None:
    gw, fb = setup
    before = len(fb.chat_requests())
    r = httpx.post(gw.url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]},
                   headers=headers)
    assert assert_openai_error(r, 401)["type"] == "authentication_error"
    assert len(fb.chat_requests()) == before


def test_keys_from_file_and_sdk_auth_error(setup) -> None:
    gw, _ = setup
    r = httpx.post(gw.url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]},
                   headers=auth("sk-file-key"))
    assert r.status_code == 200
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=gw.url + "/v1", api_key="nope", max_retries=0).models.list()


@pytest.mark.parametrize("body,param", [
    (b"{not json", None),
    (b"[1,2]", None),
    (b'{"messages": "hi"}', "messages"),
    (b'{"messages": []}', "messages"),
    (b'{"messages": [{"role": "wizard", "content": "x"}]}', "messages[0].role"),
    (b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": "lots"}', "max_tokens"),
    (b'{"messages": [{"role": "user", "content": "x"}], "temperature": 9}', "temperature"),
    (b'{"messages": [{"role": "user", "content": "x"}], "stream": "yes"}', "stream"),
    (b'{"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}', None),
    (b'{"messages": [{"role": "user", "content": 5}]}', "messages[0].content"),
])
def test_bad_requests_are_400_and_never_reach_a_backend(setup, body: bytes, param) -> None:
    gw, fb = setup
    before = len(fb.chat_requests())
    r = httpx.post(gw.url + "/v1/chat/completions", content=body, headers=auth())
    err = assert_openai_error(r, 400)
    if param is not None:
        assert err["param"] == param
    assert len(fb.chat_requests()) == before


def test_unknown_model_is_404(setup) -> None:
    gw, _fb = setup
    r = httpx.post(gw.url + "/v1/chat/completions", headers=auth(),
                   json={"model": "gpt-4", "messages": [{"role": "user", "content": "x"}]})
    assert assert_openai_error(r, 404)["code"] == "model_not_found"


def test_oversized_body_is_413_before_buffering(setup) -> None:
    gw, fb = setup
    before = len(fb.chat_requests())
    r = httpx.post(gw.url + "/v1/chat/completions", headers=auth(), content=b'{"messages":"' + b"a" * 200_000 + b'"}')
    assert assert_openai_error(r, 413)["code"] == "request_too_large"
    # a 50 MB declared body is refused from the header alone: we send only a few bytes of it
    with socket.create_connection(("127.0.0.1", gw.port)) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " + KEY.encode() +
                  b"\r\nContent-Type: application/json\r\nContent-Length: 52428800\r\n\r\n{\"messages\":")
        s.settimeout(5)
        head = s.recv(4096)
    assert head.startswith(b"HTTP/1.1 413")
    # chunked upload with no length: cut off once past the limit
    def chunks():
        for _ in range(100):
            yield b"a" * 10_000
    r = httpx.post(gw.url + "/v1/chat/completions", headers=auth(), content=chunks())
    assert r.status_code == 413
    assert len(fb.chat_requests()) == before


def test_unknown_route_and_method(setup) -> None:
    gw, _ = setup
    assert_openai_error(httpx.get(gw.url + "/v1/nope"), 404)
    assert_openai_error(httpx.get(gw.url + "/v1/chat/completions", headers=auth()), 405)


def test_health_ready_metrics(setup) -> None:
    gw, _ = setup
    assert httpx.get(gw.url + "/health").json() == {"status": "ok"}
    ready = httpx.get(gw.url + "/ready")
    assert ready.status_code == 200 and ready.json() == {"status": "ready"}  # keys configured: status only
    ready = httpx.get(gw.url + "/ready", headers=auth())
    assert ready.status_code == 200 and ready.json()["backends"][0]["state"] == "ready"
    httpx.post(gw.url + "/v1/chat/completions", headers=auth(), json={"messages": [{"role": "user", "content": "m"}]})
    m = httpx.get(gw.url + "/metrics")
    assert m.headers["content-type"].startswith("text/plain")
    text = m.text
    for name in ("vlgate_requests_total{", "vlgate_in_flight ", "vlgate_queued ",
                 "vlgate_request_duration_seconds_bucket",
                 "vlgate_time_to_first_byte_seconds_bucket", "vlgate_backend_slots{", "vlgate_backend_state{",
                 "vlgate_affinity_hits_total "):
        assert name in text, name
    assert 'vlgate_requests_total{route="chat",status="200"}' in text
    assert KEY not in text


def test_models_lists_served_model(setup) -> None:
    gw, _ = setup
    c = openai.OpenAI(base_url=gw.url + "/v1", api_key=KEY, max_retries=0, _strict_response_validation=True)
    assert c.models.list().data[0].id == "youtu-vl"
    assert c.models.retrieve("youtu-vl").id == "youtu-vl"
    with pytest.raises(openai.NotFoundError):
        c.models.retrieve("nope")


def test_gateway_survives_everything(setup) -> None:
    gw, _ = setup
    r = httpx.post(gw.url + "/v1/chat/completions", headers=auth(),
                   json={"messages": [{"role": "user", "content": "ok"}]})
    assert r.status_code == 200
    assert "Traceback" not in gw.log()


def test_request_id_is_returned_and_propagated(setup) -> None:
    gw, _ = setup
    body = {"messages": [{"role": "user", "content": "id"}]}
    r = httpx.post(gw.url + "/v1/chat/completions", headers={**auth(), "X-Request-ID": "trace-42"}, json=body)
    assert r.status_code == 200 and r.headers["x-request-id"] == "trace-42"
    r = httpx.post(gw.url + "/v1/chat/completions", headers=auth(), json=body)
    assert len(r.headers["x-request-id"]) == 16
    r = httpx.post(gw.url + "/v1/chat/completions", headers={**auth(), "X-Request-ID": "bad id\\x01"}, json={})
    assert r.status_code == 400 and r.headers["x-request-id"] != "bad id\\x01"
    with httpx.stream("POST", gw.url + "/v1/chat/completions", headers={**auth(), "X-Request-ID": "s-1"},
                      json={**body, "stream": True}) as s:
        assert s.headers["x-request-id"] == "s-1"
