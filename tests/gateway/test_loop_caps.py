"""Item caps (apis/caps.py) and the event-loop lag metric (observe/looplag.py).

A few MB of `{}` tools, messages or content parts held the gateway's event loop for seconds in pydantic, and
/health stopped answering. Each cap: at the cap passes, one over is a 400 naming the list; end to end, hostile
bodies sent together are all refused while /health keeps answering.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client import CollectorRegistry

from support.fakebackend import FakeBackend
from support.gateway_process import GatewayProcess
from vlgate.errors import APIError
from vlgate.gateway.apis import caps
from vlgate.gateway.apis.anthropic.schemas import validate_count, validate_messages
from vlgate.gateway.apis.openai import schemas
from vlgate.gateway.apis.openai.tokens import DetokenizeRequest, TokenizeRequest
from vlgate.gateway.apis.responses.schemas import validate_responses
from vlgate.gateway.observe.looplag import LoopLag

JSON = {"Content-Type": "application/json"}
TEXT = {"type": "text", "text": "x"}
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
CALL = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


def nested(depth: int) -> dict[str, Any]:
    """A JSON object `depth` levels deep."""
    node: dict[str, Any] = {}
    for _ in range(depth - 1):
        node = {"a": node}
    return node


def spread(n: int) -> list[dict[str, Any]]:
    """n content parts over 2048 messages: two each, the rest in the last (over MAX_PARTS_TOTAL, not MAX_PARTS)."""
    full = caps.MAX_MESSAGES - 1
    return [user([TEXT, TEXT]) for _ in range(full)] + [user([TEXT] * (n - 2 * full))]


def chat(**fields: Any) -> dict[str, Any]:
    return {"messages": [user("x")], **fields}


def anth(**fields: Any) -> dict[str, Any]:
    return {"model": "youtu-vl", "max_tokens": 5, "messages": [user("x")], **fields}


def resp(**fields: Any) -> dict[str, Any]:
    return {"input": "x", **fields}


def _chat(b: Any) -> None:
    schemas.validate(schemas.ChatCompletionRequest, b)


def _completion(b: Any) -> None:
    schemas.validate(schemas.CompletionRequest, b)


def _embedding(b: Any) -> None:
    schemas.validate(schemas.EmbeddingRequest, b)


def _tokenize(b: Any) -> None:
    schemas.validate(TokenizeRequest, b)


def _detokenize(b: Any) -> None:
    schemas.validate(DetokenizeRequest, b)


# (name, validate, body with n items, cap, the param named one over the cap)
CASES: list[tuple[str, Callable[[Any], None], Callable[[int], dict[str, Any]], int, str]] = [
    ("chat tools", _chat, lambda n: chat(tools=[TOOL] * n), caps.MAX_TOOLS, "tools"),
    ("chat functions", _chat, lambda n: chat(functions=[{"name": "f"}] * n), caps.MAX_TOOLS, "functions"),
    ("chat messages", _chat, lambda n: {"messages": [user("x")] * n}, caps.MAX_MESSAGES, "messages"),
    ("chat parts", _chat, lambda n: {"messages": [user("x"), user([TEXT] * n)]}, caps.MAX_PARTS, "messages[1].content"),
    ("chat parts in all", _chat, lambda n: {"messages": spread(n)}, caps.MAX_PARTS_TOTAL,
     f"messages[{caps.MAX_MESSAGES - 1}].content"),
    ("chat tool_calls", _chat, lambda n: {"messages": [user("x"), {"role": "assistant", "tool_calls": [CALL] * n}]},
     caps.MAX_TOOL_CALLS, "messages[1].tool_calls"),
    ("chat stop", _chat, lambda n: chat(stop=["s"] * n), caps.MAX_STOP, "stop"),
    ("chat logit_bias", _chat, lambda n: chat(logit_bias={str(i): 1 for i in range(n)}), caps.MAX_LOGIT_BIAS,
     "logit_bias"),
    ("chat logit_bias pairs", _chat, lambda n: chat(logit_bias=[[i, 1] for i in range(n)]), caps.MAX_LOGIT_BIAS,
     "logit_bias"),
    ("chat metadata", _chat, lambda n: chat(metadata={f"k{i}": "v" for i in range(n)}), caps.MAX_METADATA,
     "metadata"),
    ("chat schema depth", _chat, lambda n: chat(tools=[TOOL, {"type": "function", "function": {
        "name": "g", "parameters": nested(n)}}]), caps.MAX_SCHEMA_DEPTH, "tools[1].function.parameters"),
    ("chat schema values", _chat, lambda n: chat(tools=[{"type": "function", "function": {
        "name": "g", "parameters": {"enum": list(range(n - 2))}}}]), caps.MAX_SCHEMA_NODES,
     "tools[0].function.parameters"),
    ("chat response schema", _chat, lambda n: chat(response_format={"type": "json_schema", "json_schema": {
        "name": "r", "schema": nested(n)}}), caps.MAX_SCHEMA_DEPTH, "response_format.json_schema.schema"),
    ("prompt ids", _completion, lambda n: {"prompt": list(range(n))}, caps.MAX_TOKEN_IDS, "prompt"),
    ("prompt id lists", _completion, lambda n: {"prompt": [[1, 2], list(range(n - 2))]}, caps.MAX_TOKEN_IDS,
     "prompt[1]"),
    ("completion stop", _completion, lambda n: {"prompt": "x", "stop": ["s"] * n}, caps.MAX_STOP, "stop"),
    ("embedding inputs", _embedding, lambda n: {"input": ["x"] * n}, caps.MAX_EMBEDDING_INPUTS, "input"),
    ("embedding tokens", _embedding, lambda n: {"input": [[1] * 1000, [1] * (n - 1000)]}, caps.MAX_EMBEDDING_TOKENS,
     "input[1]"),
    ("tokenize", _tokenize, lambda n: {"content": [1] * n}, caps.MAX_TOKEN_IDS, "content"),
    ("detokenize", _detokenize, lambda n: {"tokens": [1] * n}, caps.MAX_TOKEN_IDS, "tokens"),
    ("responses input", validate_responses, lambda n: resp(input=[user("x")] * n), caps.MAX_INPUT_ITEMS, "input"),
    ("responses parts", validate_responses, lambda n: resp(input=[user([{"type": "input_text", "text": "x"}] * n)]),
     caps.MAX_PARTS, "input[0].content"),
    ("responses tool output", validate_responses, lambda n: resp(input=[{
        "type": "function_call_output", "call_id": "c", "output": [{"type": "input_text", "text": "x"}] * n}]),
     caps.MAX_PARTS, "input[0].output"),
    ("responses tools", validate_responses, lambda n: resp(tools=[{"type": "function", "name": "f"}] * n),
     caps.MAX_TOOLS, "tools"),
    ("responses metadata", validate_responses, lambda n: resp(metadata={f"k{i}": "v" for i in range(n)}),
     caps.MAX_METADATA, "metadata"),
    ("responses schema", validate_responses, lambda n: resp(tools=[{"type": "function", "name": "f",
                                                                    "parameters": nested(n)}]),
     caps.MAX_SCHEMA_DEPTH, "tools[0].parameters"),
    ("responses text schema", validate_responses, lambda n: resp(text={"format": {
        "type": "json_schema", "name": "r", "schema": nested(n)}}), caps.MAX_SCHEMA_DEPTH, "text.format.schema"),
    ("anthropic messages", validate_messages, lambda n: anth(messages=[user("x")] * n), caps.MAX_MESSAGES, "messages"),
    ("anthropic blocks", validate_messages, lambda n: anth(messages=[user([TEXT] * n)]), caps.MAX_PARTS,
     "messages[0].content"),
    ("anthropic blocks in all", validate_messages, lambda n: anth(messages=spread(n)), caps.MAX_PARTS_TOTAL,
     f"messages[{caps.MAX_MESSAGES - 1}].content"),
    ("anthropic tool_result", validate_messages, lambda n: anth(messages=[user([{
        "type": "tool_result", "tool_use_id": "t", "content": [TEXT] * n}])]), caps.MAX_PARTS,
     "messages[0].content[0].content"),
    ("anthropic system", validate_messages, lambda n: anth(system=[TEXT] * n), caps.MAX_PARTS, "system"),
    ("anthropic tools", validate_messages, lambda n: anth(tools=[{"name": "f", "input_schema": {}}] * n),
     caps.MAX_TOOLS_ANTHROPIC, "tools"),
    ("anthropic stop", validate_messages, lambda n: anth(stop_sequences=["s"] * n), caps.MAX_STOP,
     "stop_sequences"),
    ("anthropic metadata", validate_messages, lambda n: anth(metadata={f"k{i}": "v" for i in range(n)}),
     caps.MAX_METADATA, "metadata"),
    ("anthropic schema", validate_messages, lambda n: anth(tools=[{"name": "f", "input_schema": nested(n)}]),
     caps.MAX_SCHEMA_DEPTH, "tools[0].input_schema"),
    ("anthropic count", validate_count, lambda n: {"model": "m", "messages": [user("x")] * n}, caps.MAX_MESSAGES,
     "messages"),
]


@pytest.mark.parametrize(("name", "check", "body", "cap", "param"), CASES, ids=[c[0] for c in CASES])
def test_each_cap_at_and_one_over(name: str, check: Callable[[Any], None], body: Callable[[int], dict[str, Any]],
                                  cap: int, param: str) -> None:
    check(body(cap))  # at the cap: valid
    with pytest.raises(APIError) as exc:
        check(body(cap + 1))
    assert exc.value.status == 400 and exc.value.param == param, (exc.value.param, exc.value.message)
    assert exc.value.code in ("array_above_max_length", "object_above_max_properties", "schema_too_deep",
                              "schema_too_large")
    assert f"'{param}'" in exc.value.message


def test_every_list_walked_into_is_capped_first() -> None:
    """`[]` steps go only over lists an earlier row capped: the checks stay cheap whatever the body."""
    for table in (caps.CHAT, caps.COMPLETIONS, caps.EMBEDDINGS, caps.RESPONSES, caps.ANTHROPIC):
        capped: set[str] = set()
        for row in table:
            steps = row.path.split(".")
            for i, step in enumerate(steps):
                if step.endswith("[]"):
                    assert ".".join([*steps[:i], step[:-2]]).replace("[]", "") in capped, row.path
            if isinstance(row, caps.Cap):
                capped.add(row.path.replace("[]", ""))


def test_worst_body_within_caps_validates_fast() -> None:
    """The measurement quoted in caps.py: bodies at the caps, validated as the endpoint does (on the loop)."""
    schema = {"type": "object", "properties": {f"p{i}": {"type": "string", "description": "d"} for i in range(80)}}
    bodies: list[tuple[str, Callable[[Any], None], dict[str, Any]]] = [
        ("chat 2048 messages x2 parts", _chat, {"messages": spread(caps.MAX_PARTS_TOTAL)}),
        ("chat 2048 messages x2 wrong parts", _chat, {"messages": [user([{}, {}])] * caps.MAX_MESSAGES}),
        ("chat 128 tools, 32k schema values", _chat, chat(tools=[{"type": "function", "function": {
            "name": "f", "parameters": schema}}] * caps.MAX_TOOLS)),
        ("anthropic 2048 messages x2 blocks", validate_messages, anth(messages=spread(caps.MAX_PARTS_TOTAL))),
        ("anthropic 2048 x2 wrong blocks", validate_messages, anth(messages=[user([{}, {}])] * caps.MAX_MESSAGES)),
        ("responses 2048 items x2 parts", validate_responses, resp(input=[user([
            {"type": "input_text", "text": "x"}] * 2)] * caps.MAX_INPUT_ITEMS)),
        ("prompt 2**17 token ids", _completion, {"prompt": list(range(caps.MAX_TOKEN_IDS))}),
    ]
    worst = 0.0
    for name, check, body in bodies:
        took = min(_timed(check, orjson.loads(orjson.dumps(body))) for _ in range(3))
        worst = max(worst, took)
        print(f"{name}: {took * 1000:.1f} ms")
    assert worst < 0.25, worst  # ~30 ms on 2 shared cores; the bound leaves room for a loaded CI machine


def _timed(check: Callable[[Any], None], body: dict[str, Any]) -> float:
    started = time.perf_counter()
    try:
        check(body)
    except APIError:
        pass
    return time.perf_counter() - started


# -- end to end: a real `vlgate serve` ------------------------------------------------------------------------

MAX_BODY = 8_000_000


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayProcess, FakeBackend]]:
    fb = FakeBackend().start()
    gw = GatewayProcess({"backends": [{"url": fb.url}], "gateway": {"max_body_bytes": MAX_BODY}},
                        tmp_path_factory.mktemp("caps")).start()
    gw.wait_ready()
    yield gw, fb
    gw.stop()
    fb.stop()
    assert "Traceback" not in gw.log(), gw.log()


@pytest.mark.parametrize("what", ["tools", "messages"])
def test_openai_and_anthropic_shapes_end_to_end(served: tuple[GatewayProcess, FakeBackend], what: str) -> None:
    gw, fb = served
    openai_cap, anthropic_cap = (caps.MAX_TOOLS, caps.MAX_TOOLS_ANTHROPIC) if what == "tools" else (
        caps.MAX_MESSAGES, caps.MAX_MESSAGES)

    def openai_body(n: int) -> dict[str, Any]:
        return chat(tools=[TOOL] * n) if what == "tools" else {"messages": [user("x")] * n}

    def anthropic_body(n: int) -> dict[str, Any]:
        return anth(tools=[{"name": "f", "input_schema": {}}] * n) if what == "tools" else anth(
            messages=[user("x")] * n)

    with httpx.Client(base_url=gw.url, timeout=30) as client:
        before = len(fb.chat_requests())
        assert client.post("/v1/chat/completions", json=openai_body(openai_cap)).status_code == 200
        assert client.post("/v1/messages", json=anthropic_body(anthropic_cap)).status_code == 200
        assert len(fb.chat_requests()) == before + 2
        r = client.post("/v1/chat/completions", json=openai_body(openai_cap + 1))
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["param"] == what and err["code"] == "array_above_max_length"
        assert err["type"] == "invalid_request_error" and f"maximum length {openai_cap}" in err["message"]
        r = client.post("/v1/messages", json=anthropic_body(anthropic_cap + 1))
        assert r.status_code == 400, r.text
        body = r.json()
        assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
        assert f"'{what}'" in body["error"]["message"] and str(anthropic_cap) in body["error"]["message"]
        assert len(fb.chat_requests()) == before + 2


def hostile_bodies() -> dict[str, tuple[str, bytes]]:
    """A few MB each, cheap to parse (`{}` items), seconds of pydantic without the caps."""
    deep = b'{"type": "function", "function": {"name": "f", "parameters": ' + b'{"a": ' * 1000 + b"{}" + \
        b"}" * 1000 + b"}}"
    return {
        "300k tools": ("/v1/chat/completions", orjson.dumps(chat(tools=[{}] * 300_000))),
        "500k messages": ("/v1/chat/completions", orjson.dumps({"messages": [{}] * 500_000})),
        "200k content parts": ("/v1/chat/completions", orjson.dumps({"messages": [user([{}] * 200_000)]})),
        "deep schema": ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}], "tools": [' +
                        deep + b"]}"),
        "anthropic 500k messages": ("/v1/messages", orjson.dumps(anth(messages=[{}] * 500_000))),
        "responses 500k input": ("/v1/responses", orjson.dumps(resp(input=[{}] * 500_000))),
        "over max_body_bytes": ("/v1/chat/completions", orjson.dumps(chat(tools=[{}] * (MAX_BODY // 3)))),
    }


def test_hostile_bodies_leave_health_answering(served: tuple[GatewayProcess, FakeBackend]) -> None:
    """Every hostile body refused (400, or 413 past max_body_bytes) while /health, polled every 20 ms, answers.

    Without the caps (measured with caps.check a no-op, 2 shared cores): the 14 requests took 27.9 s and one
    /health waited 11.8 s (the deep schema even reached the backend). With them: 1.0 s, /health p99 ~0.2 s,
    the rest being orjson's parse of the bodies and freeing them (before any cap: endpoint/bodyjson.py)."""
    gw, fb = served
    reached = len(fb.chat_requests())
    bodies = hostile_bodies()
    latencies: list[float] = []
    stop = threading.Event()

    def poll() -> None:
        with httpx.Client(base_url=gw.url, timeout=30) as client:
            while not stop.is_set():
                started = time.perf_counter()
                assert client.get("/health").status_code == 200
                latencies.append(time.perf_counter() - started)
                stop.wait(0.02)

    statuses: dict[str, int] = {}

    def send(name: str) -> None:
        path, raw = bodies[name]
        with httpx.Client(base_url=gw.url, timeout=60) as client:
            statuses[name] = client.post(path, content=raw, headers=JSON).status_code

    poller = threading.Thread(target=poll)
    poller.start()
    time.sleep(0.2)
    senders = [threading.Thread(target=send, args=(name,)) for name in bodies for _ in range(2)]
    started = time.perf_counter()
    for t in senders:
        t.start()
    for t in senders:
        t.join(120)
    took = time.perf_counter() - started
    time.sleep(0.2)
    stop.set()
    poller.join(30)
    latencies.sort()
    p99, worst = latencies[int(len(latencies) * 0.99)], latencies[-1]
    print(f"\n{len(bodies) * 2} hostile requests in {took:.2f} s; /health: {len(latencies)} polls, "
          f"p50 {latencies[len(latencies) // 2] * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, max {worst * 1000:.1f} ms")
    assert statuses == {name: 413 if name == "over max_body_bytes" else 400 for name in bodies}, statuses
    assert len(fb.chat_requests()) == reached  # none reached the backend
    assert p99 < 0.5, p99  # without the caps: 11.8 s
    metrics = httpx.get(gw.url + "/metrics").text
    assert "vlgate_event_loop_lag_seconds_bucket" in metrics and "vlgate_event_loop_lag_max_seconds" in metrics
    lag = float(next(line.split()[-1] for line in metrics.splitlines()
                     if line.startswith("vlgate_event_loop_lag_max_seconds ")))
    print(f"vlgate_event_loop_lag_max_seconds after the hostile bodies: {lag * 1000:.1f} ms")
    shown = httpx.get(gw.url + "/status").json()["gateway"]["loop_lag_ms"]  # the status page's tile
    assert isinstance(shown, float) and shown >= 0


# -- the loop-lag metric --------------------------------------------------------------------------------------

def test_loop_lag_rises_while_a_blocking_call_runs() -> None:
    registry = CollectorRegistry()

    async def run() -> LoopLag:
        lag = LoopLag(registry, interval_s=0.01)
        lag.start()
        await asyncio.sleep(0.1)
        assert lag.recent_max_s < 0.2  # an idle loop
        time.sleep(0.3)  # a synchronous step that holds the loop, as pydantic did on a huge body
        await asyncio.sleep(0.05)
        await lag.aclose()
        return lag

    lag = asyncio.run(run())
    assert lag.recent_max_s >= 0.25, lag.recent_max_s
    assert registry.get_sample_value("vlgate_event_loop_lag_max_seconds") == lag.recent_max_s
    total = registry.get_sample_value("vlgate_event_loop_lag_seconds_count")
    under = registry.get_sample_value("vlgate_event_loop_lag_seconds_bucket", {"le": "0.25"})
    assert total is not None and under is not None and total - under >= 1  # one sample past 250 ms


def test_loop_lag_window_forgets_old_stalls() -> None:
    lag = LoopLag(CollectorRegistry(), window_s=0.05)
    lag.record(0.5)
    assert lag.recent_max_s == 0.5
    time.sleep(0.06)
    lag.record(0.001)  # a new window: the stall is still in the previous one
    assert lag.recent_max_s == 0.5
    time.sleep(0.11)
    lag.record(0.002)  # two windows later
    assert lag.recent_max_s == 0.002
