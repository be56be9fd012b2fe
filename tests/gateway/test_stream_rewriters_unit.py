"""The stream taps as pure byte transformers: sse's splitter, AnthropicStreamTap, ResponsesStreamRewriter (what
test_responses_stream_unit leaves out) and PresetStreamTap. Backend events are written as llama-server b11434
sends them (nlohmann's sorted keys); every tap must give the same bytes however the stream is cut into chunks.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from typing import Any, Protocol

import anthropic
import httpx2
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai._models import validate_type
from openai._types import omit
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.chat import ChatCompletionChunk
from openai.types.responses import ResponseStreamEvent

from vlgate.gateway.apis.anthropic.stream import AnthropicStreamTap
from vlgate.gateway.apis.responses.completion import Echo
from vlgate.gateway.apis.responses.stream import ResponsesStreamRewriter
from vlgate.gateway.endpoint import sse
from vlgate.gateway.presetrun.postprocess import PresetStreamTap
from vlgate.presets import PresetRun


class Tap(Protocol):
    def feed(self, chunk: bytes) -> bytes: ...
    def flush(self) -> bytes: ...


def ev(name: str | None, data: Any) -> bytes:
    return (f"event: {name}\n" if name else "").encode() + b"data: " + json.dumps(data).encode() + b"\n\n"


def through(tap: Tap, data: bytes, cuts: Sequence[int] = ()) -> bytes:
    """The tap's whole output for `data` fed in pieces cut at `cuts`."""
    edges = [0, *sorted(set(cuts)), len(data)]
    return b"".join(tap.feed(data[a:b]) for a, b in itertools.pairwise(edges)) + tap.flush()


def cut_points(data: bytes) -> st.SearchStrategy[list[int]]:
    return st.lists(st.integers(0, len(data)), max_size=12)


# ---------------------------------------------------------------- sse

def test_event_splitter_keeps_the_unfinished_event() -> None:
    split = sse.EventSplitter()
    assert split.feed(b"data: 1\n\nda") == [b"data: 1"]
    assert split.feed(b"ta: 2\n") == []
    assert split.feed(b"\n: ping\n\n\n\ndata: 3") == [b"data: 2", b": ping", b""]
    assert split.rest() == b"data: 3" and split.rest() == b""


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from([b"data: {}", b": ping", b"event: x\ndata: [1]", b"data: \xff"]), max_size=8),
       st.data())
def test_event_splitter_is_independent_of_chunking(events: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(e + b"\n\n" for e in events) + b"data: {"
    split = sse.EventSplitter()
    cuts = data.draw(cut_points(stream))
    edges = [0, *sorted(cuts), len(stream)]
    got = [e for a, b in itertools.pairwise(edges) for e in split.feed(stream[a:b])]
    assert got == events and split.rest() == b"data: {"


@pytest.mark.parametrize(("raw", "parsed"), [
    (b'event: message_start\ndata: {"a":1}', ("message_start", {"a": 1})),
    (b'event:error\ndata:{"a":1}', ("error", {"a": 1})),
    (b'data: {"a":[1,2]}', (None, {"a": [1, 2]})),
    (b'data: "text"', (None, "text")),
    (b"data: [DONE]", (None, None)),
    (b": ping", (None, None)),
    (b":", (None, None)),
    (b'event: error\ndata: {"code":500,"mes', ("error", None)),
    (b"event: ping", ("ping", None)),
    (b'event: x\r\ndata: {"a":1}\r', ("x", {"a": 1})),
    (b"", (None, None)),
])
def test_parse(raw: bytes, parsed: tuple[str | None, Any]) -> None:
    assert sse.parse(raw) == parsed


@pytest.mark.parametrize("name", [None, "", "content_block_start"])
def test_event_round_trips(name: str | None) -> None:
    data = {"type": "x", "text": "line\nbreak é", "n": [1, None]}
    raw = sse.event(name, data)
    assert raw.endswith(b"\n\n") and raw.count(b"\n\n") == 1 and raw.startswith(b"event: " if name else b"data: ")
    assert sse.parse(raw[:-2]) == (name or None, data)


# ---------------------------------------------------------------- AnthropicStreamTap

def block_start(index: int, block: dict[str, Any]) -> bytes:
    return ev("content_block_start", {"content_block": block, "index": index, "type": "content_block_start"})


def block_delta(index: int, delta: dict[str, Any]) -> bytes:
    return ev("content_block_delta", {"delta": delta, "index": index, "type": "content_block_delta"})


def block_stop(index: int) -> bytes:
    return ev("content_block_stop", {"index": index, "type": "content_block_stop"})


MESSAGE_START = ev("message_start", {"message": {
    "content": [], "id": "msg_1", "model": "m", "role": "assistant", "stop_reason": None, "stop_sequence": None,
    "type": "message", "usage": {"cache_read_input_tokens": 0, "input_tokens": 9, "output_tokens": 0}},
    "type": "message_start"})
THINKING = block_start(0, {"thinking": "", "type": "thinking"})
TEXT = block_start(1, {"text": "", "type": "text"})
TOOL_USE = block_start(2, {"id": "call_1", "name": "get_weather", "type": "tool_use"})
PASSED = [  # events the tap must pass as the same bytes
    MESSAGE_START,
    block_delta(0, {"thinking": "Let me", "type": "thinking_delta"}), block_stop(0),
    block_delta(1, {"text": "Checking.", "type": "text_delta"}), block_stop(1),
    block_delta(2, {"partial_json": '{"city":', "type": "input_json_delta"}),
    block_delta(2, {"partial_json": '"Paris"}', "type": "input_json_delta"}), block_stop(2),
    ev("message_delta", {"delta": {"stop_reason": "tool_use", "stop_sequence": None}, "type": "message_delta",
                         "usage": {"output_tokens": 12}}),
    ev("message_stop", {"type": "message_stop"}),
    b":\n\n",
    ev("ping", {"type": "ping"}),
]
ANTHROPIC_STREAM = b"".join(PASSED[:1] + [THINKING] + PASSED[1:3] + [TEXT] + PASSED[3:5] + [TOOL_USE] + PASSED[5:])


def test_anthropic_tap_completes_block_starts_and_passes_the_rest() -> None:
    out = through(AnthropicStreamTap(), ANTHROPIC_STREAM)
    events = [e + b"\n\n" for e in out.split(b"\n\n")[:-1]]
    assert [e for e in events if not e.startswith(b"event: content_block_start")] == PASSED
    starts = [sse.parse(e[:-2])[1]["content_block"] for e in events if e.startswith(b"event: content_block_start")]
    assert starts == [{"thinking": "", "type": "thinking", "signature": ""}, {"text": "", "type": "text"},
                      {"id": "call_1", "name": "get_weather", "type": "tool_use", "input": {}}]


def test_anthropic_tap_keeps_fields_that_are_there() -> None:
    given_block = {"id": "c", "input": {"a": 1}, "name": "f", "type": "tool_use"}
    out = AnthropicStreamTap().feed(block_start(0, given_block) + block_start(1, {"signature": "s", "thinking": "",
                                                                                   "type": "thinking"}))
    blocks = [sse.parse(e)[1]["content_block"] for e in out.split(b"\n\n")[:-1]]
    assert blocks == [given_block, {"signature": "s", "thinking": "", "type": "thinking"}]
    other = block_start(0, {"type": "redacted_thinking", "data": "x"})
    assert AnthropicStreamTap().feed(other) == other


def test_anthropic_tap_output_passes_the_sdk() -> None:
    """The anthropic SDK (strict) accumulates the tapped stream into the final message."""
    out = through(AnthropicStreamTap(), ANTHROPIC_STREAM)
    transport = httpx2.MockTransport(lambda _: httpx2.Response(200, content=out,
                                                               headers={"content-type": "text/event-stream"}))
    client = anthropic.Anthropic(api_key="unused", base_url="http://gw", max_retries=0,
                                 http_client=httpx2.Client(transport=transport), _strict_response_validation=True)
    with client.messages.stream(model="m", max_tokens=20, messages=[{"role": "user", "content": "hi"}]) as stream:
        message = stream.get_final_message()
    assert [b.type for b in message.content] == ["thinking", "text", "tool_use"]
    assert message.content[2].input == {"city": "Paris"}  # type: ignore[union-attr]
    assert message.stop_reason == "tool_use" and message.usage.output_tokens == 12


def test_anthropic_tap_rewrites_error_events() -> None:
    error = ev("error", {"code": 400, "message": "too long", "type": "exceed_context_size_error"})
    openai_form = ev(None, {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}})
    out = AnthropicStreamTap().feed(MESSAGE_START + error + openai_form)
    assert out == MESSAGE_START + sse.event("error", {"type": "error", "error": {
        "type": "invalid_request_error", "message": "too long"}}) + sse.event("error", {"type": "error", "error": {
            "type": "overloaded_error", "message": "Loading model"}})


def test_anthropic_tap_flush_returns_the_unfinished_event_as_is() -> None:
    tap = AnthropicStreamTap()
    assert tap.feed(MESSAGE_START + TOOL_USE[:30]) == MESSAGE_START
    assert tap.flush() == TOOL_USE[:30] and tap.flush() == b""


@settings(max_examples=60, deadline=None)
@given(cut_points(ANTHROPIC_STREAM + b'event: error\ndata: {"code":500,"message":"x","type":"server_error"}\n\n'))
def test_anthropic_tap_is_independent_of_chunking(cuts: list[int]) -> None:
    stream = ANTHROPIC_STREAM + b'event: error\ndata: {"code":500,"message":"x","type":"server_error"}\n\n'
    assert through(AnthropicStreamTap(), stream, cuts) == through(AnthropicStreamTap(), stream)


# ---------------------------------------------------------------- ResponsesStreamRewriter (beyond its own unit tests)

RESP, MSG, RS, FC = "resp_1", "msg_1", "rs_1", "fc_1"
TOOLS = [{"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {}}}]
SMALL = {"id": RESP, "object": "response", "status": "in_progress"}
REASONING = {"content": [{"text": "Think first. Then answer.", "type": "reasoning_text"}], "encrypted_content": "",
             "id": RS, "summary": [], "type": "reasoning"}
PART = {"annotations": [], "logprobs": [], "text": "Hi", "type": "output_text"}
MESSAGE = {"content": [PART], "id": MSG, "role": "assistant", "status": "completed", "type": "message"}
CALL = {"arguments": '{"city":"Paris"}', "call_id": "call_1", "id": FC, "name": "get_weather", "status": "completed",
        "type": "function_call"}
USAGE = {"input_tokens": 20, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 9, "total_tokens": 29}
RESPONSES_STREAM = b"".join([
    ev("response.created", {"response": SMALL, "type": "response.created"}),
    ev("response.in_progress", {"response": SMALL, "type": "response.in_progress"}),
    ev("response.output_item.added", {"item": {**REASONING, "content": [], "status": "in_progress"},
                                      "type": "response.output_item.added"}),
    ev("response.reasoning_text.delta", {"delta": "Think first.", "item_id": RS,
                                         "type": "response.reasoning_text.delta"}),
    ev("response.reasoning_text.delta", {"delta": " Then answer.", "item_id": RS,
                                         "type": "response.reasoning_text.delta"}),
    ev("response.output_item.added", {"item": {"content": [], "id": MSG, "role": "assistant", "status": "in_progress",
                                               "type": "message"}, "type": "response.output_item.added"}),
    ev("response.content_part.added", {"item_id": MSG, "part": {"text": "", "type": "output_text"},
                                       "type": "response.content_part.added"}),
    ev("response.output_text.delta", {"delta": "Hi", "item_id": MSG, "type": "response.output_text.delta"}),
    ev("response.output_item.added", {"item": {**CALL, "arguments": "", "status": "in_progress"},
                                      "type": "response.output_item.added"}),
    ev("response.function_call_arguments.delta", {"delta": '{"city":', "item_id": FC,
                                                  "type": "response.function_call_arguments.delta"}),
    ev("response.function_call_arguments.delta", {"delta": '"Paris"}', "item_id": FC,
                                                  "type": "response.function_call_arguments.delta"}),
    ev("response.output_item.done", {"item": REASONING, "type": "response.output_item.done"}),
    ev("response.output_text.done", {"item_id": MSG, "text": "Hi", "type": "response.output_text.done"}),
    ev("response.content_part.done", {"item_id": MSG, "part": PART, "type": "response.content_part.done"}),
    ev("response.output_item.done", {"item": MESSAGE, "type": "response.output_item.done"}),
    ev("response.output_item.done", {"item": CALL, "type": "response.output_item.done"}),
    ev("response.completed", {"response": {"created_at": 1, "id": RESP, "model": "tiny", "object": "response",
                                           "output": [REASONING, MESSAGE, CALL], "status": "completed",
                                           "usage": USAGE}, "type": "response.completed"}),
])


def decoded(out: bytes) -> list[dict[str, Any]]:
    events = []
    for raw in out.split(b"\n\n")[:-1]:
        name, data = sse.parse(raw)
        assert name == data["type"]
        events.append(data)
    return events


def test_responses_reasoning_and_function_call_pass_the_sdk() -> None:
    events = decoded(through(ResponsesStreamRewriter(Echo.of({"input": "x", "tools": TOOLS})), RESPONSES_STREAM))
    state = ResponseStreamState(input_tools=TOOLS, text_format=omit)  # type: ignore[arg-type]
    for i, event in enumerate(events):
        assert event["sequence_number"] == i
        state.handle_event(validate_type(type_=ResponseStreamEvent, value=event))  # type: ignore[arg-type]
    kinds = [e["type"] for e in events]
    done = kinds.index("response.reasoning_text.done")
    assert kinds[done + 1] == "response.output_item.done" and events[done + 1]["item"]["id"] == RS
    assert events[done] | {"sequence_number": 0} == {
        "type": "response.reasoning_text.done", "item_id": RS, "output_index": 0, "content_index": 0,
        "text": "Think first. Then answer.", "sequence_number": 0}
    deltas = [e for e in events if e["type"] == "response.reasoning_text.delta"]
    assert [(e["output_index"], e["content_index"]) for e in deltas] == [(0, 0), (0, 0)]
    assert [e["output_index"] for e in events if e["type"] == "response.output_item.added"] == [0, 1, 2]
    args = next(e for e in events if e["type"] == "response.function_call_arguments.done")
    assert args["arguments"] == '{"city":"Paris"}' and args["output_index"] == 2 and "content_index" not in args
    final = state._completed_response
    assert final is not None and final.output_text == "Hi" and final.output[2].arguments == '{"city":"Paris"}'  # type: ignore[union-attr]


def test_responses_arguments_done_sums_the_deltas_when_the_item_has_none() -> None:
    rw = ResponsesStreamRewriter(Echo.of({"input": "x"}))
    start = RESPONSES_STREAM.index(b"event: response.output_item.added\ndata: {\"item\": {\"arguments\"")
    rw.feed(RESPONSES_STREAM[start:RESPONSES_STREAM.index(b"event: response.output_item.done")])
    item = {k: v for k, v in CALL.items() if k != "arguments"}
    out = decoded(rw.feed(ev("response.output_item.done", {"item": item, "type": "response.output_item.done"})))
    assert [e["type"] for e in out] == ["response.function_call_arguments.done", "response.output_item.done"]
    assert out[0]["arguments"] == '{"city":"Paris"}' and out[0]["name"] == "get_weather"
    assert out[0]["output_index"] == out[1]["output_index"] == 0 and out[0]["sequence_number"] == 3


@settings(max_examples=40, deadline=None)
@given(cut_points(RESPONSES_STREAM))
def test_responses_rewriter_is_independent_of_chunking(cuts: list[int]) -> None:
    echo = Echo.of({"input": "x", "tools": TOOLS})
    echo_again = Echo(echo.fields, created_at=echo.created_at)
    assert through(ResponsesStreamRewriter(echo), RESPONSES_STREAM, cuts) == through(
        ResponsesStreamRewriter(echo_again), RESPONSES_STREAM)


def test_responses_unknown_events_are_numbered_and_untyped_ones_pass() -> None:
    rw = ResponsesStreamRewriter(Echo.of({"input": "x"}))
    first = rw.feed(ev("response.created", {"response": SMALL, "type": "response.created"}))
    assert sse.parse(first[:-2])[1]["sequence_number"] == 0
    untyped = b'data: {"timings":{"predicted_n":3}}\n\n'
    assert rw.feed(untyped + b"data: [DONE]\n\n") == untyped + b"data: [DONE]\n\n"  # not numbered
    out = rw.feed(ev("response.future_thing", {"type": "response.future_thing", "x": 1}))
    assert out == sse.event("response.future_thing", {"type": "response.future_thing", "x": 1, "sequence_number": 1})
    assert rw.feed(b"event: response.output_text.delta\ndata: {") == b"" and rw.flush() == (
        b"event: response.output_text.delta\ndata: {")


def test_responses_completed_event_carries_the_finishers_vlgate_field() -> None:
    def finish(response: dict[str, Any], _echo: Echo) -> None:
        response["vlgate"] = {"preset": "count", "count": 1}

    rw = ResponsesStreamRewriter(Echo.of({"input": "x"}, finish))
    out = rw.feed(ev("response.completed", {"response": {"id": RESP, "output": [MESSAGE], "usage": USAGE},
                                            "type": "response.completed"}))
    event = sse.parse(out[:-2])[1]
    assert event["vlgate"] == event["response"]["vlgate"] == {"preset": "count", "count": 1}
    assert event["response"]["status"] == "completed" and event["sequence_number"] == 0


# ---------------------------------------------------------------- PresetStreamTap

def chunk(content: str | None = None, finish: str | None = None, index: int = 0) -> bytes:
    delta = {} if content is None else {"content": content}
    return ev(None, {"choices": [{"delta": delta, "finish_reason": finish, "index": index}], "created": 1,
                     "id": "chatcmpl-1", "model": "m", "object": "chat.completion.chunk"})


PRESET_CHUNKS = [ev(None, {"choices": [{"delta": {"role": "assistant", "content": None}, "finish_reason": None,
                                        "index": 0}], "created": 1, "id": "chatcmpl-1", "model": "m",
                           "object": "chat.completion.chunk"}),
                 chunk("There are "), chunk("12 cats", index=1), b":\n\n", chunk("three dogs."), chunk(finish="stop")]
PRESET_STREAM = b"".join(PRESET_CHUNKS) + b"data: [DONE]\n\n"


def count_tap() -> PresetStreamTap:
    return PresetStreamTap(PresetRun(name="count", parsers=("count",)), [])


def test_preset_tap_adds_vlgate_to_the_last_chunk_before_done() -> None:
    out = through(count_tap(), PRESET_STREAM)
    events = out.split(b"\n\n")
    assert b"".join(e + b"\n\n" for e in events[:5]) == b"".join(PRESET_CHUNKS[:5])  # the same bytes
    last = orjson.loads(events[5][6:])
    assert last.pop("vlgate") == {"preset": "count", "image": None, "count": 3, "parse_errors": []}
    assert last == json.loads(PRESET_CHUNKS[5][6:])
    validate_type(type_=ChatCompletionChunk, value=orjson.loads(events[5][6:]))
    assert events[6:] == [b"data: [DONE]", b""]


def test_preset_tap_holds_one_event_back() -> None:
    tap = count_tap()
    assert tap.feed(PRESET_CHUNKS[0]) == b""
    assert tap.feed(PRESET_CHUNKS[1]) == PRESET_CHUNKS[0]
    assert tap.flush() == PRESET_CHUNKS[1] and tap.flush() == b""


def test_preset_tap_without_done_sends_the_held_event_unchanged() -> None:
    error = b'data: {"error":{"code":500,"message":"boom","type":"server_error"}}\n\n'
    stream = b"".join(PRESET_CHUNKS[:3]) + error + b"data: {"
    assert through(count_tap(), stream) == stream


def test_preset_tap_reports_a_truncated_answer() -> None:
    out = through(count_tap(), chunk("no number here") + chunk(finish="length") + b"data: [DONE]\n\n")
    ext = orjson.loads(out.split(b"\n\n")[1][6:])["vlgate"]
    assert ext["count"] is None and ext["parse_errors"] == [
        "no number in the answer",
        "output truncated (finish_reason=length): results may be incomplete; raise max_tokens"]


@settings(max_examples=40, deadline=None)
@given(cut_points(PRESET_STREAM))
def test_preset_tap_is_independent_of_chunking(cuts: list[int]) -> None:
    assert through(count_tap(), PRESET_STREAM, cuts) == through(count_tap(), PRESET_STREAM)
