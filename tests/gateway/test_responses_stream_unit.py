"""The Responses stream rewriter on b11434's exact event shapes (server-task.cpp), checked by the openai SDK.

A random model rarely produces a tool call or reasoning, so the backend's events are written out here
as b11434 emits them; every rewritten event must pass the SDK's strict validation and drive its
`responses.stream()` state machine to the same final response.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from openai._models import validate_type
from openai._types import omit
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import ResponseStreamEvent

from vlgate.gateway.apis.responses.completion import Echo
from vlgate.gateway.apis.responses.stream import ResponsesStreamRewriter

RESP = "resp_abc"
MSG = "msg_def"
TOOLS = [{"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {}}}]


def ev(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


def lifecycle() -> list[bytes]:
    small = {"id": RESP, "object": "response", "status": "in_progress"}
    return [ev("response.created", {"type": "response.created", "response": small}),
            ev("response.in_progress", {"type": "response.in_progress", "response": small})]


def text_events(text: list[str]) -> list[bytes]:
    out = [ev("response.output_item.added", {"type": "response.output_item.added", "item": {
               "content": [], "id": MSG, "role": "assistant", "status": "in_progress", "type": "message"}}),
           ev("response.content_part.added", {"type": "response.content_part.added", "item_id": MSG,
                                               "part": {"type": "output_text", "text": ""}})]
    out += [ev("response.output_text.delta", {"type": "response.output_text.delta", "item_id": MSG, "delta": d})
            for d in text]
    return out


def final_events(text: str, calls: list[tuple[str, str, str]], announce_calls: bool) -> tuple[list[bytes], list]:
    """b11434's final-result events: text done events, then one output_item.done per tool call, completed."""
    part = {"type": "output_text", "annotations": [], "logprobs": [], "text": text}
    message = {"type": "message", "status": "completed", "id": MSG, "content": [part], "role": "assistant"}
    out, pre = [], []
    if announce_calls:
        for cid, name, args in calls:
            pre.append(ev("response.output_item.added", {"type": "response.output_item.added", "item": {
                "id": "fc_" + cid, "arguments": "", "call_id": "call_" + cid, "name": name,
                "type": "function_call", "status": "in_progress"}}))
            pre.append(ev("response.function_call_arguments.delta", {
                "type": "response.function_call_arguments.delta", "delta": args, "item_id": "fc_" + cid}))
    out += [ev("response.output_text.done", {"type": "response.output_text.done", "item_id": MSG, "text": text}),
            ev("response.content_part.done", {"type": "response.content_part.done", "item_id": MSG, "part": part}),
            ev("response.output_item.done", {"type": "response.output_item.done", "item": message})]
    output = [message]
    for cid, name, args in calls:
        item = {"id": "fc_" + cid, "type": "function_call", "status": "completed", "arguments": args,
                "call_id": "call_" + cid, "name": name}
        out.append(ev("response.output_item.done", {"type": "response.output_item.done", "item": item}))
        output.append(item)
    usage = {"input_tokens": 20, "output_tokens": 9, "total_tokens": 29, "input_tokens_details": {"cached_tokens": 0}}
    out.append(ev("response.completed", {"type": "response.completed", "response": {
        "id": RESP, "object": "response", "created_at": 1, "status": "completed", "model": "tiny",
        "output": output, "usage": usage}, "timings": {"predicted_n": 9}}))
    return pre, out


def run(chunks: list[bytes], split_at: int = 7) -> list[dict[str, Any]]:
    """Through the rewriter in awkward chunk sizes; the client's events, decoded."""
    rw = ResponsesStreamRewriter(Echo.of({"tools": TOOLS, "input": "x"}))
    data = b"".join(chunks)
    out = b"".join(rw.feed(data[i:i + split_at]) for i in range(0, len(data), split_at)) + rw.flush()
    events = []
    for raw in out.split(b"\n\n"):
        if raw:
            name, _, payload = raw.partition(b"\ndata: ")
            event = json.loads(payload)
            assert name == b"event: " + event["type"].encode()
            events.append(event)
    return events


def check_with_sdk(events: list[dict[str, Any]]) -> Any:
    state = ResponseStreamState(input_tools=TOOLS, text_format=omit)
    for i, event in enumerate(events):
        assert event["sequence_number"] == i
        state.handle_event(validate_type(type_=ResponseStreamEvent, value=event))  # type: ignore[arg-type]
    return state._completed_response


@pytest.mark.parametrize("announce_calls", [True, False])
def test_text_and_tool_call_stream_passes_the_sdk(announce_calls: bool) -> None:
    pre, final = final_events("Hello world", [("1", "get_weather", '{"city":"Paris"}')], announce_calls)
    events = run(lifecycle() + text_events(["Hello", " world"]) + pre + final)
    response = check_with_sdk(events)
    assert response is not None and response.output_text == "Hello world"
    call = response.output[1]
    assert call.type == "function_call" and call.arguments == '{"city":"Paris"}' and call.name == "get_weather"
    kinds = [e["type"] for e in events]
    done = kinds.index("response.function_call_arguments.done")
    assert kinds[done + 1] == "response.output_item.done" and events[done]["arguments"] == '{"city":"Paris"}'
    assert events[done]["output_index"] == 1
    assert kinds.count("response.output_item.added") == 2  # an unannounced call is announced first


def test_lifecycle_events_carry_the_whole_response_object() -> None:
    _, final = final_events("Hi", [], False)
    events = run(lifecycle() + text_events(["Hi"]) + final)
    created = events[0]["response"]
    assert created["tools"][0]["name"] == "get_weather" and created["tool_choice"] == "auto"
    assert created["parallel_tool_calls"] is True and created["output"] == [] and created["status"] == "in_progress"
    completed = events[-1]["response"]
    assert completed["usage"]["output_tokens_details"] == {"reasoning_tokens": 0}
    assert [e["output_index"] for e in events if e["type"] == "response.output_text.delta"] == [0]
    check_with_sdk(events)


def test_an_answer_cut_by_max_output_tokens_ends_incomplete() -> None:
    _, final = final_events("Hi", [], False)  # 9 output tokens
    rw = ResponsesStreamRewriter(Echo.of({"input": "x", "max_output_tokens": 9}))
    out = rw.feed(b"".join(lifecycle() + text_events(["Hi"]) + final)).split(b"\n\n")
    last = json.loads(out[-2].partition(b"\ndata: ")[2])
    assert out[-2].startswith(b"event: response.incomplete\n") and last["type"] == "response.incomplete"
    assert last["response"]["status"] == "incomplete"
    assert last["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    validate_type(type_=ResponseStreamEvent, value=last)  # type: ignore[arg-type]


def test_comments_and_error_events_pass_unchanged() -> None:
    rw = ResponsesStreamRewriter(Echo.of({"input": "x"}))
    error = b'data: {"error":{"code":500,"message":"boom","type":"server_error"}}\n\n'
    assert rw.feed(b":\n\n" + error) == b":\n\n" + error
