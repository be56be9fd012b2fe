"""Usage per key, the fleet's series in /metrics, probes with keys, the dashboard's metrics, `vlgate status`.

Against a `vlgate serve` process in front of two real llama-servers, with named and plain API keys
and a scrape token.
"""

from __future__ import annotations

import base64
import io
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from support.gateway_process import GatewayProcess
from vlgate.gateway.frontdoor.auth import key_name

pytestmark = pytest.mark.slow

TEAM_KEY = "sk-team-a-0123456789"
PLAIN_KEY = "sk-plain-9876543210"
TOKEN = "scrape-me-please"
DASHBOARD = Path(__file__).parents[2] / "vlgate" / "configs" / "grafana-dashboard.json"


@pytest.fixture
def fleet(llama_server, tmp_path: Path) -> Iterator[tuple[GatewayProcess, list]]:
    servers = [llama_server(slots=2, ctx=1024, mmproj=True) for _ in range(2)]
    config = {"backends": [{"url": s.url} for s in servers],
              "gateway": {"api_keys": [{"name": "team-a", "key": TEAM_KEY, "admin": True}, PLAIN_KEY],
                          "metrics_token": TOKEN,
                          "health": {"interval_s": 0.5}}}
    gw = GatewayProcess(config, tmp_path).start()
    _wait_ready(gw, 2)
    yield gw, servers
    gw.stop()


def _wait_ready(gw: GatewayProcess, n: int) -> None:
    import time

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        body = status(gw)
        if sum(b["state"] == "ready" for b in body["backends"]) >= n:
            return
        time.sleep(0.05)
    raise AssertionError(f"fewer than {n} backends ready: {body}")


def status(gw: GatewayProcess, key: str = TEAM_KEY) -> dict:
    r = httpx.get(gw.url + "/status", headers={"Authorization": f"Bearer {key}"}, timeout=5)
    assert r.status_code == 200, r.text
    return r.json()


def scrape(gw: GatewayProcess) -> str:
    r = httpx.get(gw.url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)
    assert r.status_code == 200, r.text
    return r.text


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def client(gw: GatewayProcess, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key, _strict_response_validation=True, max_retries=0)


def png_data_url() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (20, 160, 30)).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def test_usage_per_key_from_answers_and_streams(fleet) -> None:
    gw, _ = fleet
    team = client(gw, TEAM_KEY)
    messages = [{"role": "user", "content": "tell me about the fleet"}]
    plain = team.chat.completions.create(model="youtu-vl", max_tokens=5, messages=messages)
    assert plain.usage is not None
    # a stream without include_usage: the tokens come from llama-server's timings on the last chunk
    assert list(team.chat.completions.create(model="youtu-vl", max_tokens=4, messages=messages, stream=True))
    chunks = list(team.chat.completions.create(model="youtu-vl", max_tokens=3, messages=messages, stream=True,
                                               stream_options={"include_usage": True}))
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == plain.usage.prompt_tokens
    with pytest.raises(openai.BadRequestError):
        team.chat.completions.create(model="youtu-vl", max_tokens="x", messages=messages)  # type: ignore[arg-type]
    with pytest.raises(openai.AuthenticationError):
        client(gw, "sk-wrong").chat.completions.create(model="youtu-vl", max_tokens=2, messages=messages)
    image = client(gw, PLAIN_KEY).chat.completions.create(model="youtu-vl", max_tokens=2, messages=[
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": png_data_url()}},
                                     {"type": "text", "text": "what is this?"}]}])
    assert image.usage is not None

    plain_name = key_name(PLAIN_KEY)
    text = scrape(gw)
    got = samples(text)
    team_l, plain_l = frozenset({("key", "team-a")}), frozenset({("key", plain_name)})
    assert got[("vlgate_key_requests_total", frozenset({("key", "team-a"), ("status", "200")}))] == 3
    assert got[("vlgate_key_requests_total", frozenset({("key", "team-a"), ("status", "400")}))] == 1
    assert got[("vlgate_key_completion_tokens_total", team_l)] == 5 + 4 + 3
    assert got[("vlgate_key_prompt_tokens_total", team_l)] == 3 * plain.usage.prompt_tokens
    assert got[("vlgate_key_images_total", plain_l)] == 1
    assert got[("vlgate_key_prompt_tokens_total", plain_l)] == image.usage.prompt_tokens
    assert got[("vlgate_key_completion_tokens_total", plain_l)] == 2
    # a request without a valid key is counted, under no key's name
    assert got[("vlgate_key_requests_total", frozenset({("key", "anonymous"), ("status", "401")}))] == 1

    keys = {k["name"]: k for k in status(gw)["keys"]}
    assert keys["team-a"] == {"name": "team-a", "requests": {"200": 3, "400": 1}, "images": 0,
                              "prompt_tokens": 3 * plain.usage.prompt_tokens, "completion_tokens": 12}
    assert keys[plain_name]["images"] == 1
    for body in (text, json.dumps(status(gw))):  # names only, never a key
        assert TEAM_KEY not in body and PLAIN_KEY not in body


def test_metrics_reexport_backend_series_behind_the_scrape_token(fleet) -> None:
    gw, _ = fleet
    for auth in ({}, {"Authorization": f"Bearer {TEAM_KEY}"}, {"Authorization": "Bearer nope"}):
        r = httpx.get(gw.url + "/metrics", headers=auth, timeout=5)
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    client(gw, TEAM_KEY).chat.completions.create(model="youtu-vl", max_tokens=6,
                                                 messages=[{"role": "user", "content": "hi"}])
    served = [b["name"] for b in status(gw)["backends"] if b["served"]]
    _wait_for(lambda: samples(scrape(gw)).get(
        ("llamacpp:tokens_predicted_total", frozenset({("backend", served[0])}))) == 6)
    got = samples(scrape(gw))
    for name in ("backend-0", "backend-1"):
        b = frozenset({("backend", name)})
        for series in ("llamacpp:prompt_tokens_total", "llamacpp:requests_processing", "llamacpp:requests_deferred",
                       "llamacpp:predicted_tokens_seconds", "vlgate_backend_slots_busy"):
            assert (series, b) in got, (series, name)
        assert 0 < got[("vlgate_backend_scrape_seconds", b)] < 1
    assert not any(("gpu" in dict(labels)) for _, labels in got)  # no `gpu` label outside `vlgate up`


def test_dashboard_queries_only_series_the_gateway_exports(fleet) -> None:
    gw, _ = fleet
    client(gw, TEAM_KEY).chat.completions.create(model="youtu-vl", max_tokens=2,
                                                 messages=[{"role": "user", "content": "hi"}])
    _wait_for(lambda: "llamacpp:" in scrape(gw))
    families = list(text_string_to_metric_families(scrape(gw)))
    # a series with samples, or a declared family (a labelled counter has no sample before its first event)
    exported = {s.name for f in families for s in f.samples} | {f.name for f in families}
    exported |= {f.name + "_total" for f in families if f.type == "counter"}
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [v["query"]["query"] for v in dashboard["templating"]["list"] if isinstance(v.get("query"), dict)]
    queried = {m for e in exprs for m in re.findall(r"(?:vlgate_|llamacpp:)[a-z_:]+", e)}
    assert len(queried) >= 15
    assert sorted(queried - exported) == []


def test_probes_answer_status_only_without_a_key(fleet) -> None:
    gw, _ = fleet
    r = httpx.get(gw.url + "/ready", timeout=5)
    assert r.status_code == 200 and r.json() == {"status": "ready"}
    wrong = httpx.get(gw.url + "/ready", headers={"Authorization": "Bearer wrong"}, timeout=5)
    assert wrong.json() == {"status": "ready"}
    detail = httpx.get(gw.url + "/ready", headers={"Authorization": f"Bearer {PLAIN_KEY}"}, timeout=5).json()
    assert [b["name"] for b in detail["backends"]] == ["backend-0", "backend-1"]
    assert "url" not in detail["backends"][0] and "config" not in detail  # a user key: no addresses
    anthropic_style = httpx.get(gw.url + "/ready", headers={"x-api-key": TEAM_KEY}, timeout=5).json()
    assert len(anthropic_style["backends"]) == 2 and anthropic_style["backends"][0]["url"].startswith("http://")
    assert httpx.get(gw.url + "/health", timeout=5).json() == {"status": "ok"}
    r = httpx.get(gw.url + "/status", timeout=5)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    page = httpx.get(gw.url + "/", timeout=5)  # the page holds no data: anyone may load it
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for asset in ("/static/status.js", "/static/status.css"):
        assert httpx.get(gw.url + asset, timeout=5).status_code == 200


def _vlgate_status(*args: str, key: str | None = TEAM_KEY, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", **({"VLGATE_API_KEY": key} if key else {})}
    return subprocess.run([sys.executable, "-m", "vlgate.cli", "status", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, check=False)


def test_vlgate_status_shows_the_numbers_and_watches(fleet) -> None:
    gw, servers = fleet
    client(gw, TEAM_KEY).chat.completions.create(model="youtu-vl", max_tokens=3,
                                                 messages=[{"role": "user", "content": "hi"}])
    r = _vlgate_status("--url", gw.url)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith(f"gateway {gw.url} (youtu-vl, v") and ": ready, up " in lines[0]
    header = next(i for i, ln in enumerate(lines) if ln.startswith("NAME "))
    assert lines[header].split()[:4] == ["NAME", "STATE", "GPU", "SLOTS"]
    rows = {ln.split()[0]: ln.split() for ln in lines[header + 1: header + 3]}
    assert rows["backend-0"][1] == rows["backend-1"][1] == "ready"
    assert {rows["backend-0"][3], rows["backend-1"][3]} <= {"0/2", "1/2", "2/2"}
    assert any(ln.split()[:2] == ["team-a", "1"] for ln in lines)

    denied = _vlgate_status("--url", gw.url, key=None)
    assert denied.returncode == 2 and "--key" in denied.stderr

    watched = _vlgate_status("--url", gw.url, "--watch", "0.2", "--count", "3")
    assert watched.returncode == 0, watched.stderr
    assert watched.stdout.count(f"gateway {gw.url} ") == 3

    servers[1].kill()  # a watch goes on through a backend failure, and says so
    _wait_for(lambda: status(gw)["backends"][1]["state"] == "down")
    r = _vlgate_status("--url", gw.url, "--json")
    body = json.loads(r.stdout)
    assert r.returncode == 0 and body["backends"][1]["state"] == "down"
    assert body["backends"][1]["last_error"].startswith("down: unreachable")


def _wait_for(predicate, timeout: float = 10.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def test_usage_per_key_on_responses_and_messages(fleet) -> None:
    """The Responses and Anthropic routes are counted by the same hook, from their own usage shapes."""
    import anthropic

    gw, _ = fleet
    oa = client(gw, TEAM_KEY)
    r = oa.responses.create(model="youtu-vl", input="hello", max_output_tokens=4)
    streamed = [e for e in oa.responses.create(model="youtu-vl", input="hello", max_output_tokens=3, stream=True)]
    # cut off at max_output_tokens: the stream ends with response.incomplete, as OpenAI's does
    done = next(e for e in streamed if e.type in ("response.completed", "response.incomplete")).response
    ac = anthropic.Anthropic(base_url=gw.url, api_key=PLAIN_KEY, max_retries=0)
    m = ac.messages.create(model="youtu-vl", max_tokens=5, messages=[{"role": "user", "content": "hello"}])
    with ac.messages.stream(model="youtu-vl", max_tokens=2, messages=[{"role": "user", "content": "hi"}]) as s:
        final = s.get_final_message()
    assert r.usage is not None and done.usage is not None

    keys = {k["name"]: k for k in status(gw)["keys"]}
    team, plain = keys["team-a"], keys[key_name(PLAIN_KEY)]
    assert team["requests"] == {"200": 2} and plain["requests"] == {"200": 2}
    assert team["completion_tokens"] == r.usage.output_tokens + done.usage.output_tokens
    assert team["prompt_tokens"] == r.usage.input_tokens + done.usage.input_tokens
    assert plain["completion_tokens"] == m.usage.output_tokens + final.usage.output_tokens
    assert plain["prompt_tokens"] == m.usage.input_tokens + final.usage.input_tokens
