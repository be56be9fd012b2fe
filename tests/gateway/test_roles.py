"""Roles: an admin key sees the fleet (backend URLs, every key's usage, /admin); a user key (any key not
marked `admin: true`) sees its own usage and no backend address on /status, /ready and `vlgate status`.
A gateway without keys shows everything, as before. Real `vlgate serve` processes, a fake backend."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from support.fakebackend import FakeBackend
from support.gateway_process import GatewayProcess
from vlgate.backends import Backend
from vlgate.config import parse_config
from vlgate.gateway.frontdoor.auth import KeyChecker, key_name
from vlgate.gateway.observe.statusdata import public_backends, public_names

ADMIN, TEAM, PLAIN = "sk-admin-0123456789", "sk-team-a-0123456789", "sk-plain-0123456789"
HELLO = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
UNPARK = "/admin/backends/backend-0/unpark"


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayProcess, FakeBackend]]:
    fb = FakeBackend().start()
    keys = [{"name": "team-a", "key": TEAM}, PLAIN, {"name": "ops", "key": ADMIN, "admin": True}]
    gw = GatewayProcess({"backends": [{"url": fb.url}], "gateway": {"api_keys": keys}},
                        tmp_path_factory.mktemp("roles")).start()
    gw.wait_ready()
    for key in (TEAM, TEAM, PLAIN, ADMIN):
        r = httpx.post(gw.url + "/v1/chat/completions", json=HELLO, headers=auth(key), timeout=10)
        assert r.status_code == 200, r.text
    yield gw, fb
    gw.stop()
    fb.stop()


def auth(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


def get(gw: GatewayProcess, path: str, key: str | None) -> httpx.Response:
    return httpx.get(gw.url + path, headers=auth(key), timeout=10)


def no_address(text: str, fb: FakeBackend) -> None:
    assert fb.url not in text and f":{fb.port}" not in text, text


def test_a_user_key_sees_its_own_usage_and_no_backend_address(gw) -> None:
    gateway, fb = gw
    for key, name, requests in ((TEAM, "team-a", 2), (PLAIN, key_name(PLAIN), 1)):
        r = get(gateway, "/status", key)
        assert r.status_code == 200, r.text
        s = r.json()
        assert s["role"] == "user" and s["key"] == name
        assert [k["name"] for k in s["keys"]] == [name] and s["keys"][0]["requests"] == {"200": requests}
        assert [b["name"] for b in s["backends"]] == ["backend-0"] and s["backends"][0]["state"] == "ready"
        assert not {"url", "reason", "last_error", "structure_tokens"} & set(s["backends"][0])
        assert s["gateway"]["requests"] >= 4  # the gateway's load is shared; who sent it is not
        no_address(r.text, fb)


def test_an_admin_key_sees_the_fleet(gw) -> None:
    gateway, fb = gw
    s = get(gateway, "/status", ADMIN).json()
    assert s["role"] == "admin" and s["key"] == "ops"
    assert {k["name"] for k in s["keys"]} == {"team-a", key_name(PLAIN), "ops"}
    assert s["backends"][0]["url"] == fb.url
    ready = get(gateway, "/ready", ADMIN).json()
    assert ready["backends"][0]["url"] == fb.url and "config" in ready and isinstance(ready["pid"], int)


def test_ready_by_role(gw) -> None:
    gateway, fb = gw
    assert get(gateway, "/ready", None).json() == {"status": "ready"}
    assert get(gateway, "/ready", "wrong-key").json() == {"status": "ready"}
    r = get(gateway, "/ready", TEAM)
    body = r.json()
    assert body["status"] == "ready" and "config" not in body and "pid" not in body
    assert [(b["name"], b["state"]) for b in body["backends"]] == [("backend-0", "ready")]
    no_address(r.text, fb)


def test_admin_needs_an_admin_key(gw) -> None:
    gateway, _ = gw
    for key in (TEAM, PLAIN):
        r = httpx.post(gateway.url + UNPARK, headers=auth(key), timeout=10)
        assert r.status_code == 403, r.text
        assert r.json()["error"]["type"] == "permission_error"
        assert r.json()["error"]["code"] == "admin_key_required"
    assert httpx.post(gateway.url + UNPARK, timeout=10).status_code == 401
    assert httpx.post(gateway.url + UNPARK, headers=auth("nope"), timeout=10).status_code == 401
    r = httpx.post(gateway.url + UNPARK, headers=auth(ADMIN), timeout=10)
    assert r.status_code == 409 and r.json()["error"]["code"] == "not_parked"


def vlgate_status(gw: GatewayProcess, key: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vlgate.cli", "status", "--url", gw.url, "--key", key],
                          capture_output=True, text=True, timeout=30, check=False)


def test_vlgate_status_by_role(gw) -> None:
    gateway, fb = gw
    admin = vlgate_status(gateway, ADMIN)
    assert admin.returncode == 0, admin.stderr
    assert fb.url in admin.stdout and "team-a" in admin.stdout and "ops" in admin.stdout
    user = vlgate_status(gateway, TEAM)
    assert user.returncode == 0, user.stderr
    assert "user key" in user.stdout and "backend-0" in user.stdout and "team-a" in user.stdout
    assert "ops" not in user.stdout.split("\n", 3)[-1] and key_name(PLAIN) not in user.stdout
    no_address(user.stdout, fb)


def test_no_keys_everyone_sees_everything(tmp_path: Path) -> None:
    fb = FakeBackend().start()
    gw = GatewayProcess({"backends": [{"url": fb.url}]}, tmp_path).start()
    try:
        gw.wait_ready()
        s = get(gw, "/status", None).json()
        assert s["role"] == "admin" and s["backends"][0]["url"] == fb.url
        assert get(gw, "/ready", None).json()["backends"][0]["url"] == fb.url
        assert httpx.post(gw.url + UNPARK, timeout=10).status_code == 409
    finally:
        gw.stop()
        fb.stop()


# -- units ---------------------------------------------------------------------------------------------------
def test_key_roles_unit() -> None:
    config = parse_config({"gateway": {"api_keys": ["plain", {"name": "u", "key": "ku"},
                                                    {"name": "a", "key": "ka", "admin": True}]}})
    keys = KeyChecker(config.resolved_api_keys())
    assert keys.access(b"Bearer ka").admin and keys.access(b"Bearer ka").name == "a"
    assert not keys.access(b"Bearer ku").admin and not keys.access(b"Bearer plain").admin
    assert keys.identify_access(b"Bearer nope") is None and keys.identify_access(None) is None
    assert KeyChecker([]).access(None).admin  # no keys: open, as before


def test_public_view_drops_addresses() -> None:
    backends = [Backend(url="http://10.0.0.5:8081", name="svc/10.0.0.5:8081", reason="connect to 10.0.0.5 failed"),
                Backend(url="http://10.0.0.6:8081", name="svc/10.0.0.6:8081"),
                Backend(url="http://10.0.0.7:8081", name="gpu0")]
    assert public_names(backends) == ["svc/#1", "svc/#2", "gpu0"]
    view = public_backends(backends, [b.describe() for b in backends])
    assert "10.0.0" not in str(view) and view[0]["state"] == "starting"
