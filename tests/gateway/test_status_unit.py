"""The status pieces without processes: usage parsing, key names, timelines, the text view."""

from __future__ import annotations

import io
from typing import ClassVar

import orjson
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from vlgate.cli.status import render, watch
from vlgate.config import ConfigError, NamedKey, parse_config
from vlgate.errors import APIError
from vlgate.gateway.frontdoor.auth import KeyChecker, bearer_matches, key_name
from vlgate.gateway.observe.timeline import Timeline
from vlgate.gateway.observe.usage import KeyUsage, StreamEnds, Tokens, answer_tokens


def sse(*events: dict) -> bytes:
    return b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in events) + b"data: [DONE]\n\n"


def ends_of(body: bytes, chunk: int = 700) -> StreamEnds:
    ends = StreamEnds()
    for i in range(0, len(body), chunk):  # chunk boundaries cut events anywhere
        ends.feed(body[i:i + chunk])
    return ends


def test_stream_ends_keep_head_and_tail_only() -> None:
    first = {"type": "message_start", "message": {"usage": {"input_tokens": 11, "output_tokens": 1}}}
    body = sse(first, *({"choices": [{"delta": {"content": "x" * 50}}]} for _ in range(2000)),
               {"type": "message_delta", "usage": {"output_tokens": 2000}})
    ends = ends_of(body)
    assert len(ends.head) == 4096 and ends.tail_size < 16384 + 700
    assert answer_tokens(None, ends) == Tokens(prompt=11, completion=2000)


@pytest.mark.parametrize(("events", "expected"), [
    ([{"choices": [{"delta": {"content": "hi"}}]},
      {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3}}],
     Tokens(7, 3)),  # chat stream with include_usage
    # Responses: the completed event carries the whole answer, longer than the tail: only its usage is read
    ([{"type": "response.completed", "response": {"output": [{"text": "y" * 40000}],
                                                  "usage": {"input_tokens": 9, "output_tokens": 4}}}], Tokens(9, 4)),
    ([{"type": "message_start", "message": {"usage": {"input_tokens": 5, "output_tokens": 1}}},
      {"type": "message_delta", "usage": {"output_tokens": 6}}], Tokens(5, 6)),  # Anthropic stream
    ([{"choices": [], "timings": {"prompt_n": 2, "cache_n": 20, "predicted_n": 8}}], Tokens(22, 8)),  # no usage
    # the model writing the word "usage" in its text is not a usage object
    ([{"choices": [{"delta": {"content": '{"usage": {"prompt_tokens": 999}}'}}]}], None),
    ([{"choices": [{"delta": {}}], "usage": None}], None),
])
def test_stream_tokens_in_every_api_shape(events: list[dict], expected: Tokens | None) -> None:
    assert answer_tokens(None, ends_of(sse(*events))) == expected


def test_answer_tokens_of_a_non_stream_answer_and_of_garbage() -> None:
    answer = orjson.dumps({"choices": [{"message": {"content": '"usage": {"prompt_tokens": 1}'}}],
                           "usage": {"prompt_tokens": 4, "completion_tokens": 2,
                                     "prompt_tokens_details": {"cached_tokens": 1}}, "timings": {"predicted_n": 2}})
    assert answer_tokens(answer, None) == Tokens(4, 2)
    assert answer_tokens(b'{"usage": {"input_tokens": 3, "output_tokens": 5}, "type": "message"}', None) == Tokens(3, 5)
    assert answer_tokens(b"not json", None) is None
    assert answer_tokens(b'{"usage": {"prompt_tokens": 4', None) is None  # cut off
    assert answer_tokens(None, None) is None


def test_key_usage_counts_names_never_keys() -> None:
    registry = CollectorRegistry()
    usage = KeyUsage(registry)
    usage.record("team-a", 200, Tokens(10, 5), images=2)
    usage.record("team-a", 429, None, images=0)
    usage.record(None, 401, None, images=0)
    assert usage.describe() == [
        {"name": "anonymous", "requests": {"401": 1}, "prompt_tokens": 0, "completion_tokens": 0, "images": 0},
        {"name": "team-a", "requests": {"200": 1, "429": 1}, "prompt_tokens": 10, "completion_tokens": 5, "images": 2},
    ]
    text = generate_latest(registry).decode()
    assert 'vlgate_key_completion_tokens_total{key="team-a"} 5.0' in text
    assert 'vlgate_key_images_total{key="team-a"} 2.0' in text


def test_named_and_plain_keys(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text("# ops\nsk-from-file\n")
    monkeypatch.setenv("VLGATE_API_KEYS", "sk-from-env")
    config = parse_config({"gateway": {"api_keys": ["sk-plain", {"name": "team-a", "key": "sk-a"}],
                                       "api_keys_file": str(keys_file)}})
    checker = KeyChecker(config.resolved_api_keys())
    assert checker.check(b"Bearer sk-a") == "team-a"
    assert checker.check(b"Bearer sk-plain") == key_name("sk-plain")
    assert checker.check(b"bearer sk-from-file") == key_name("sk-from-file")
    assert checker.check(b"Bearer sk-from-env") == key_name("sk-from-env")
    assert key_name("sk-plain") == key_name("sk-plain") != key_name("sk-plain2")  # stable, distinct
    assert "sk-plain" not in key_name("sk-plain")
    with pytest.raises(APIError):
        checker.check(b"Bearer sk-nope")
    assert checker.identify(b"Bearer sk-nope") is None and checker.identify(None) is None
    assert checker.identify(b"Bearer sk-a") == "team-a"
    assert KeyChecker([]).check(None) is None
    assert isinstance(config.gateway.api_keys[1], NamedKey)
    with pytest.raises(ConfigError, match=r"gateway\.api_keys\.0\.NamedKey\.name"):
        parse_config({"gateway": {"api_keys": [{"name": "has space", "key": "k"}]}})


def test_scrape_token_comparison() -> None:
    assert bearer_matches(b"Bearer tok", "tok") and bearer_matches(b"bearer  tok ", "tok")
    assert not bearer_matches(b"Bearer tok2", "tok") and not bearer_matches(None, "tok")
    assert not bearer_matches(b"Basic tok", "tok")


def test_timeline_buckets_rates_and_percentiles() -> None:
    now = [1000.0]
    line = Timeline(bucket_s=5, buckets=4, clock=lambda: now[0])
    for ms in range(1, 101):
        line.record(ms / 1000, ttft_s=0.002, ok=ms != 100)
    line.add_tokens(50)
    now[0] = 1006.0  # the next bucket, 1 s into it
    line.record(0.5, None, ok=True)
    s = line.series()
    assert s["t"] == [-15, -10, -5, 0]
    assert s["rps"] == [0, 0, 20.0, 1.0]  # a full bucket over 5 s; the current one over its 1 s so far
    assert s["tps"][2] == 10.0 and s["errors"][2] == 1
    assert s["p50"][2] == 51.0 and s["p99"][2] == 100.0 and s["ttft_p50"][2] == 2.0
    assert s["p50"][0] is None and s["ttft_p50"][3] is None
    rates = line.rates(window_s=60)
    assert rates["rps"] == pytest.approx(101 / 6, rel=0.01) and rates["p99_ms"] == 100.0
    now[0] = 1100.0  # everything aged out of the window
    assert line.rates(window_s=60)["rps"] == 0 and line.series()["rps"] == [0, 0, 0, 0]


SNAPSHOT = {
    "version": "0.1.0", "model": "youtu-vl", "uptime_s": 3725, "status": "ready", "reason": "", "draining": False,
    "gateway": {"in_flight": 1, "queued": 0, "queue_size": 256, "rps": 2.5, "tps": 120.0, "p50_ms": 80.0,
                "p99_ms": 900.0, "ttft_p50_ms": 30.0, "requests": 42, "status_429": 1, "status_503": 0, "retries": 2,
                "image_cache": {"hit_rate": 0.5}, "affinity": {"hit_rate": None}},
    "backends": [
        {"name": "gpu0", "url": "http://127.0.0.1:8081", "state": "ready", "reason": "", "gpu": "0", "slots": 4,
         "slots_busy": 1, "in_flight": 1, "deferred": 0.0, "rps": 2.5, "tps": 120.0, "p50_ms": 80.0, "p99_ms": 900.0,
         "ttft_p50_ms": 30.0, "restarts": 1, "last_error": "crashed: killed by SIGKILL",
         "gpu_stats": {"memory_used": 6 * 2**30, "memory_total": 80 * 2**30, "utilization": 37},
         "structure_tokens": {"ok": False, "reason": "<box> is split"}},
        {"name": "gpu1", "url": "http://127.0.0.1:8082", "state": "restarting", "reason": "restart 2 in 2.00s",
         "gpu": "1", "slots": 4, "slots_busy": None, "in_flight": 0, "deferred": None, "rps": 0, "tps": 0,
         "p50_ms": None, "p99_ms": None, "ttft_p50_ms": None, "restarts": 2, "last_error": "", "gpu_stats": None,
         "structure_tokens": None}],
    "keys": [{"name": "team-a", "requests": {"200": 40, "429": 1}, "prompt_tokens": 900, "completion_tokens": 300,
              "images": 3}],
}


def test_text_view_of_a_snapshot() -> None:
    lines = render(SNAPSHOT, "http://gw").splitlines()
    assert lines[0] == "gateway http://gw (youtu-vl, v0.1.0): ready, up 1h 2m"
    assert lines[1].startswith("  in flight 1, queued 0/256, 2.5 req/s, 120 tok/s, p50 80 ms, p99 900 ms")
    assert lines[2] == "  requests 42, 429 1, 503 0, retries 2, image cache hits 50%, affinity hits -"
    assert lines[3].split()[:5] == ["NAME", "STATE", "GPU", "SLOTS", "IN-FLIGHT"]
    assert lines[4].split() == ["gpu0", "ready", "0", "1/4", "1", "0", "2.5", "120", "80", "900", "30", "1",
                                "6.0/80G", "37%", "http://127.0.0.1:8081"]
    assert lines[5].split()[:4] == ["gpu1", "restarting", "1", "0/4"]
    assert "  gpu0 last error: crashed: killed by SIGKILL" in lines
    assert "  gpu0: structure tokens stripped: <box> is split" in lines
    assert "  gpu1: restart 2 in 2.00s" in lines
    assert lines[-1].split() == ["team-a", "41", "200:40", "429:1", "900", "300", "3"]


def test_text_view_of_a_user_snapshot() -> None:
    """A user key's /status (no url, no errors): the table loses its URL column and says why."""
    keep = ("name", "state", "slots", "in_flight", "served", "slots_busy", "deferred", "restarts", "gpu_stats",
            "rps", "tps", "p50_ms", "p99_ms", "ttft_p50_ms")
    user = {**SNAPSHOT, "role": "user", "key": "team-a",
            "backends": [{k: b[k] for k in keep if k in b} for b in SNAPSHOT["backends"]]}
    text = render(user, "http://gw")
    assert "(key team-a: a user key sees its own usage and no backend addresses)" in text
    assert "URL" not in text and "127.0.0.1" not in text and "last error" not in text
    assert text.splitlines()[-1].split()[0] == "team-a"


def test_watch_redraws_a_bounded_number_of_times() -> None:
    out = io.StringIO()
    calls = []
    assert watch(lambda: calls.append(1) or len(calls) - 1, 0.01, 3, out) == 2
    assert len(calls) == 3 and out.getvalue() == ""  # not a terminal: no clear-screen codes


class _FakeNvml:
    """pynvml's calls the gateway makes, for a machine with one GPU (index 0, or its UUID)."""

    class _Mem:
        used, total = 6 * 2**30, 80 * 2**30

    class _Util:
        gpu = 37

    NVMLError = RuntimeError

    def __init__(self) -> None:
        self.closed = False

    def nvmlInit(self) -> None: ...
    def nvmlShutdown(self) -> None:
        self.closed = True

    def nvmlDeviceGetHandleByIndex(self, i: int) -> str:
        if i != 0:
            raise RuntimeError("NVML_ERROR_INVALID_ARGUMENT")
        return "h0"

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> str:
        return self.nvmlDeviceGetHandleByIndex(0 if uuid == "GPU-abc" else 9)

    def nvmlDeviceGetMemoryInfo(self, h: str) -> _Mem:
        return self._Mem()

    def nvmlDeviceGetUtilizationRates(self, h: str) -> _Util:
        return self._Util()


def test_gpu_numbers_and_the_gpu_label_under_up(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from vlgate.backends import Backend
    from vlgate.gateway.observe.fleetmetrics import FleetCollector, Scrape, _parse
    from vlgate.gateway.observe.gpustats import Gpus

    fake = _FakeNvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    gpus = Gpus()
    assert gpus.sample("0").describe() == {"memory_used": 6 * 2**30, "memory_total": 80 * 2**30, "utilization": 37}
    assert gpus.sample("GPU-abc") is not None
    assert gpus.sample("3") is None and gpus.sample(None) is None and gpus.sample("0,1") is None
    gpus.close()
    assert fake.closed

    class _Scraper:
        last: ClassVar = {"gpu0": Scrape(_parse("# TYPE llamacpp:requests_processing gauge\n"
                                                "llamacpp:requests_processing 2\n"),
                                         1, 4, Gpus().sample("0"), 0.002, 0.0)}

    registry = CollectorRegistry()
    registry.register(FleetCollector(_Scraper(), [Backend(url="http://x", name="gpu0", gpu="0"),  # type: ignore[arg-type]
                                                  Backend(url="http://y", name="remote")]))
    text = generate_latest(registry).decode()
    assert 'llamacpp:requests_processing{backend="gpu0",gpu="0"} 2.0' in text
    assert 'vlgate_gpu_memory_used_bytes{backend="gpu0",gpu="0"} 6.442450944e+09' in text
    assert 'vlgate_gpu_utilization_ratio{backend="gpu0",gpu="0"} 0.37' in text
    assert 'vlgate_backend_slots_busy{backend="gpu0"} 1.0' in text
    assert "remote" not in text  # never scraped: no series, no stale values


def test_no_nvml_means_no_gpu_numbers(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from vlgate.gateway.observe.gpustats import Gpus

    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails, as on a machine without the library
    gpus = Gpus()
    assert gpus.sample("0") is None and gpus.sample("0") is None


def test_observer_follows_backends_that_join_later() -> None:
    """DNS discovery / reload add backends after start: their restarts and errors are followed too."""
    import asyncio

    import httpx

    from vlgate.backends import Backend, BackendState
    from vlgate.gateway.observe.observer import Observer

    async def run() -> Observer:
        async with httpx.AsyncClient() as client:
            observer = Observer(CollectorRegistry(), [], client)
            joined = Backend(url="http://127.0.0.1:9", name="late", state=BackendState.DOWN)
            await observer.after_check(joined)  # not answering: no scrape, but followed from now on
            await observer.after_check(joined)
            joined.set_state(BackendState.CRASHED, "killed by SIGKILL")
            joined.set_state(BackendState.RESTARTING, "restart 1 in 1.00s")
            return observer

    observer = asyncio.run(run())
    assert observer.events["late"].restarts == 1
    assert observer.events["late"].last_error == "crashed: killed by SIGKILL"
    assert "late" not in observer.scraper.last
