"""Every backend call is charged to the key that caused it: pipelines the gateway runs itself take the key's
concurrency per call and count each call against its rate; streams (piped or cut off) are charged tokens."""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from support.fakebackend import FakeBackend
from support.gateway_process import GatewayProcess
from support.pipeline_answers import (
    OpenSetScript,
    core_answer,
    image_of,
    picture,
    png_data_url,
)

KEY = {"Authorization": "Bearer k1"}
CORE_DELAY_S = 0.3


def Segmenting() -> OpenSetScript:
    return OpenSetScript(core_delay_s=CORE_DELAY_S, core=lambda req: core_answer(image_of(req)))


def gateway(tmp_path: Path, fb: FakeBackend, limits: dict[str, Any]) -> GatewayProcess:
    gw = GatewayProcess({"backends": [{"url": fb.url}],
                         "gateway": {"api_keys": [{"name": "team", "key": "k1"}], "pipeline_parallel": 4,
                                     "key_limits": {"team": limits}}}, tmp_path)
    gw.start().wait_ready()
    return gw


def segment(gw: GatewayProcess, stream: bool = False) -> httpx.Response:
    body = {"model": "youtu-vl", "stream": stream, "preset": "segment",
            "messages": [{"role": "user", "content": [{"type": "image_url",
                                                       "image_url": {"url": png_data_url(picture())}}]}]}
    return httpx.post(gw.url + "/v1/chat/completions", json=body, headers=KEY, timeout=60)


def chat(gw: GatewayProcess, **extra: Any) -> httpx.Response:
    body = {"model": "youtu-vl", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}], **extra}
    return httpx.post(gw.url + "/v1/chat/completions", json=body, headers=KEY, timeout=30)


def test_a_pipeline_under_concurrency_1_makes_one_backend_call_at_a_time(tmp_path: Path) -> None:
    script = Segmenting()
    fb = FakeBackend(script=script, slots=8).start()
    gw = gateway(tmp_path, fb, {"concurrency": 1})
    try:
        r = segment(gw)
        assert r.status_code == 200, r.text
        arrivals = script.core_arrivals
        assert len(arrivals) == 3
        gaps = [b - a for a, b in itertools.pairwise(arrivals)]
        # each call starts only after the one before was answered (CORE_DELAY_S): never two in flight
        assert min(gaps) >= CORE_DELAY_S * 0.9, gaps
    finally:
        gw.stop()
        fb.stop()


def test_a_pipeline_under_a_spare_concurrency_runs_its_steps_in_parallel(tmp_path: Path) -> None:
    script = Segmenting()
    fb = FakeBackend(script=script, slots=8).start()
    gw = gateway(tmp_path, fb, {"concurrency": 3})
    try:
        assert segment(gw).status_code == 200
        assert max(script.core_arrivals) - min(script.core_arrivals) < CORE_DELAY_S * 0.9  # at once
    finally:
        gw.stop()
        fb.stop()


def test_each_backend_call_of_a_pipeline_counts_against_the_request_rate(tmp_path: Path) -> None:
    fb = FakeBackend(script=Segmenting(), slots=8).start()
    gw = gateway(tmp_path, fb, {"requests_per_minute": 5})
    try:
        assert segment(gw).status_code == 200  # 5 backend calls: the prompt, detect, 3 core targets
        refused = chat(gw)
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limit_exceeded"
        assert "5 requests per minute" in refused.json()["error"]["message"]
    finally:
        gw.stop()
        fb.stop()


def test_a_streamed_pipeline_is_charged_its_tokens(tmp_path: Path) -> None:
    fb = FakeBackend(script=Segmenting(), slots=8).start()  # 5 tokens a call (fake usage), 5 calls
    gw = gateway(tmp_path, fb, {"tokens_per_minute": 20})
    try:
        r = segment(gw, stream=True)
        assert r.status_code == 200 and r.text.rstrip().endswith("data: [DONE]")
        refused = chat(gw)
        assert refused.status_code == 429, refused.text
        assert "20 tokens per minute" in refused.json()["error"]["message"]
        assert refused.headers["x-should-retry"] == "false"
        keys = httpx.get(gw.url + "/status", headers=KEY, timeout=5).json()["keys"]
        team = next(u for u in keys if u["name"] == "team")
        assert team["prompt_tokens"] + team["completion_tokens"] == 25
    finally:
        gw.stop()
        fb.stop()


@pytest.mark.slow
def test_a_stream_the_client_leaves_is_charged_what_was_generated(llama_server, tmp_path: Path) -> None:
    server = llama_server(slots=1, ctx=2048)
    gw = GatewayProcess({"backends": [{"url": server.url}],
                         "gateway": {"api_keys": [{"name": "team", "key": "k1"}],
                                     "key_limits": {"team": {"tokens_per_minute": 30}}}}, tmp_path)
    gw.start().wait_ready()
    try:
        body = {"model": "youtu-vl", "max_tokens": 400, "stream": True, "ignore_eos": True,
                "messages": [{"role": "user", "content": "a long story"}]}
        with httpx.stream("POST", gw.url + "/v1/chat/completions", json=body, headers=KEY, timeout=60) as r:
            assert r.status_code == 200
            seen = 0
            for line in r.iter_lines():
                seen += line.startswith("data: ")
                if seen >= 40:
                    break  # leave with the answer half read: the gateway sees the client go
        # the cut stream is charged (more than 30 tokens were generated), so the budget is spent
        deadline = time.monotonic() + 10
        while (refused := chat(gw)).status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.2)  # the gateway notices the client left at its next write
        assert refused.status_code == 429, refused.text
        assert "30 tokens per minute" in refused.json()["error"]["message"]
    finally:
        gw.stop()
