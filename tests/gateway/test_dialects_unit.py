"""The error dialects as pure functions: the gateway's own errors and llama-server's, in OpenAI's and Anthropic's
shape, each read back by the official SDK (over a mock transport: no process, no network).

llama-server's bodies are written as b11434 sends them (server-common.cpp format_error_response, nlohmann's
sorted keys): `{"error": {"code": <status>, "message", "type"}}`, plus `n_ctx`/`n_prompt_tokens` when the
prompt is too long; mid-stream `data: {"error": ...}` on OpenAI routes, `event: error` with the bare object on
`/v1/messages`.
"""

from __future__ import annotations

from typing import Any

import anthropic
import httpx2
import openai
import orjson
import pytest
from anthropic.types.shared import ErrorResponse
from openai._models import validate_type
from openai.types.shared import ErrorObject

from vlgate.errors import APIError
from vlgate.gateway.apis.anthropic import errors as anth
from vlgate.gateway.apis.anthropic.errors import ANTHROPIC, AnthropicDialect
from vlgate.gateway.apis.openai import errors as oai
from vlgate.gateway.apis.openai.errors import OPENAI, OpenAIDialect

CONTEXT = (b'{"error":{"code":400,"message":"request (600 tokens) exceeds the available context size (512 tokens), '
           b'try increasing it","n_ctx":512,"n_prompt_tokens":600,"type":"exceed_context_size_error"}}')
BAD_IMAGE = b'{"error":{"code":500,"message":"Failed to load image or audio file","type":"server_error"}}'
NO_EMBEDDINGS = (b'{"error":{"code":501,"message":"This server does not support embeddings. Start it with '
                 b'`--embeddings`","type":"not_supported_error"}}')
UNAVAILABLE = b'{"error":{"code":503,"message":"Loading model","type":"unavailable_error"}}'
MESSAGES: list[Any] = [{"role": "user", "content": "hi"}]


def mock(status: int, body: bytes, ctype: str = "application/json",
         headers: list[tuple[bytes, bytes]] | None = None) -> httpx2.Client:
    answer = [(b"content-type", ctype.encode()), *(headers or [])]
    return httpx2.Client(transport=httpx2.MockTransport(lambda _: httpx2.Response(status, content=body,
                                                                                   headers=answer)))


def openai_error(status: int, body: bytes, stream: bool = False) -> openai.APIError:
    """What the openai SDK (strict) raises on this answer of /v1/chat/completions."""
    ctype = "text/event-stream" if stream else "application/json"
    client = openai.OpenAI(api_key="unused", base_url="http://gw/v1", http_client=mock(status, body, ctype),
                           max_retries=0, _strict_response_validation=True)
    with pytest.raises(openai.APIError) as info:
        answer = client.chat.completions.create(model="m", messages=MESSAGES, stream=stream)
        list(answer) if stream else None
    return info.value


def anthropic_error(status: int, body: bytes, stream: bool = False,
                    headers: list[tuple[bytes, bytes]] | None = None) -> anthropic.APIStatusError:
    """What the anthropic SDK (strict) raises on this answer of /v1/messages."""
    ctype = "text/event-stream" if stream else "application/json"
    client = anthropic.Anthropic(api_key="unused", base_url="http://gw", max_retries=0,
                                 http_client=mock(status, body, ctype, headers), _strict_response_validation=True)
    with pytest.raises(anthropic.APIStatusError) as info:
        answer = client.messages.create(model="m", max_tokens=4, messages=MESSAGES, stream=stream)
        list(answer) if stream else None
    return info.value


def openai_shape(body: bytes) -> dict[str, Any]:
    """The body's error object, checked against the SDK's ErrorObject (all four fields present)."""
    err = orjson.loads(body)["error"]
    assert {"message", "type", "param", "code"} <= set(err)
    validate_type(type_=ErrorObject, value=err)
    assert isinstance(err["code"], str | None) and isinstance(err["param"], str | None)
    return err


def anthropic_shape(body: bytes) -> dict[str, Any]:
    """Exactly Anthropic's error body, strictly valid for the SDK's ErrorResponse where it knows the type."""
    data = orjson.loads(body)
    assert set(data) == {"type", "error"} and set(data["error"]) == {"type", "message"}
    if data["error"]["type"] != "request_too_large":  # documented by Anthropic, missing from the SDK's union
        ErrorResponse.model_validate(data, strict=True)
    return data


# ---------------------------------------------------------------- the gateway's own APIError

def test_openai_error_body_and_event_of_an_api_error() -> None:
    exc = APIError(400, "bad value", param="temperature", code="invalid_value")
    expected = {"error": {"message": "bad value", "type": "invalid_request_error", "param": "temperature",
                          "code": "invalid_value"}}
    assert orjson.loads(OPENAI.error_body(exc)) == expected
    event = OPENAI.error_event(exc)
    assert event.startswith(b"data: ") and event.endswith(b"\n\n") and event.count(b"\n\n") == 1
    assert orjson.loads(event[6:]) == expected
    raised = openai_error(400, OPENAI.error_body(exc))
    assert isinstance(raised, openai.BadRequestError) and raised.code == "invalid_value"
    assert raised.param == "temperature" and raised.body == expected["error"]
    streamed = openai_error(200, event, stream=True)
    assert streamed.code == "invalid_value" and streamed.message == "bad value"


@pytest.mark.parametrize(("status", "sdk"), [(401, openai.AuthenticationError), (404, openai.NotFoundError),
                                             (429, openai.RateLimitError), (503, openai.InternalServerError)])
def test_openai_api_error_status_reaches_the_sdk(status: int, sdk: type[openai.APIStatusError]) -> None:
    exc = APIError(status, "no")
    err = openai_shape(OPENAI.error_body(exc))
    assert err == {"message": "no", "type": exc.type, "param": None, "code": None}
    assert isinstance(openai_error(status, OPENAI.error_body(exc)), sdk)


def test_openai_response_carries_status_headers_and_body() -> None:
    exc = APIError(503, "busy", code="overloaded", headers={"Retry-After": "2"})
    response = oai.response(exc)
    assert response.status_code == 503 and response.media_type == "application/json"
    assert response.headers["retry-after"] == "2" and response.headers["x-should-retry"] == "false"
    assert response.body == OPENAI.error_body(exc)
    assert "x-should-retry" not in oai.response(APIError(404, "nope")).headers


ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                   404: "not_found_error", 405: "invalid_request_error", 413: "request_too_large",
                   422: "invalid_request_error", 429: "rate_limit_error", 500: "api_error", 502: "api_error",
                   503: "overloaded_error", 504: "timeout_error", 529: "overloaded_error", 418: "invalid_request_error"}
ANTHROPIC_SDK = {400: anthropic.BadRequestError, 401: anthropic.AuthenticationError,
                 403: anthropic.PermissionDeniedError, 404: anthropic.NotFoundError,
                 413: anthropic.ContentTooLargeError, 429: anthropic.RateLimitError,
                 500: anthropic.InternalServerError, 503: anthropic.ServiceUnavailableError}


@pytest.mark.parametrize("status", sorted(ANTHROPIC_TYPES))
def test_anthropic_error_body_maps_the_status(status: int) -> None:
    exc = APIError(status, f"failed {status}", type="server_error", code="whatever")  # OpenAI's fields: not shown
    data = anthropic_shape(ANTHROPIC.error_body(exc))
    assert data == {"type": "error", "error": {"type": ANTHROPIC_TYPES[status], "message": f"failed {status}"}}
    assert anth.error_type(status) == ANTHROPIC_TYPES[status]
    if status in ANTHROPIC_SDK:
        raised = anthropic_error(status, ANTHROPIC.error_body(exc))
        assert type(raised) is ANTHROPIC_SDK[status] and raised.body == data


def test_anthropic_error_event_is_raised_by_the_sdk_stream() -> None:
    event = ANTHROPIC.error_event(APIError(503, "all backends busy"))
    assert event.startswith(b"event: error\ndata: ") and event.endswith(b"\n\n")
    assert anth.is_error(event)
    raised = anthropic_error(200, event, stream=True)
    assert raised.body == {"type": "error", "error": {"type": "overloaded_error", "message": "all backends busy"}}


def test_id_headers() -> None:
    assert isinstance(OPENAI, OpenAIDialect) and isinstance(ANTHROPIC, AnthropicDialect)
    assert OPENAI.id_headers(b"req-1") == [(b"x-request-id", b"req-1")]
    assert ANTHROPIC.id_headers(b"req-1") == [(b"x-request-id", b"req-1"), (b"request-id", b"req-1")]
    body = ANTHROPIC.error_body(APIError(400, "x"))
    assert anthropic_error(400, body, headers=ANTHROPIC.id_headers(b"req-1")).request_id == "req-1"



# ---------------------------------------------------------------- llama-server's error answers, OpenAI's shape

def test_context_overflow_becomes_context_length_exceeded() -> None:
    status, body = OPENAI.backend_error(400, CONTEXT)
    assert status == 400
    assert openai_shape(body) == {
        "message": "request (600 tokens) exceeds the available context size (512 tokens), try increasing it",
        "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded",
        "n_ctx": 512, "n_prompt_tokens": 600}
    raised = openai_error(status, body)
    assert isinstance(raised, openai.BadRequestError)
    assert raised.code == "context_length_exceeded" and raised.param == "messages"  # what LangChain branches on


@pytest.mark.parametrize(("status", "kind", "expected"), [
    (400, "invalid_request_error", (400, "invalid_request_error", "invalid_request")),
    (401, "authentication_error", (401, "authentication_error", "invalid_api_key")),
    (403, "permission_error", (403, "permission_error", "permission_denied")),
    (404, "not_found_error", (404, "not_found_error", "not_found")),
    (500, "server_error", (500, "server_error", "backend_error")),
    (501, "not_supported_error", (400, "invalid_request_error", "not_supported")),  # a missing feature: no 5xx
    (503, "unavailable_error", (503, "service_unavailable", "backend_unavailable")),
    (409, "conflict_error", (409, "invalid_request_error", "conflict_error")),  # unknown: type from the status
    (502, "", (502, "server_error", None)),
])
def test_llama_server_error_types(status: int, kind: str, expected: tuple[int, str, str | None]) -> None:
    raw = orjson.dumps({"error": {"code": status, "message": "m", "type": kind}})
    out_status, body = oai.complete_error(status, raw)
    assert (out_status, *(openai_shape(body)[k] for k in ("type", "code"))) == expected
    assert openai_shape(body)["param"] is None and openai_shape(body)["message"] == "m"
    assert oai.backend_status(status, raw) == out_status


@pytest.mark.parametrize("message", ["Failed to load image or audio file", "failed to process image",
                                     "Failed to parse tool call arguments as JSON", "Unsupported content part type",
                                     "Invalid 'messages'", "image input is not supported"])
def test_a_500_that_is_a_bad_request_is_a_400(message: str) -> None:
    raw = orjson.dumps({"error": {"code": 500, "message": message, "type": "server_error"}})
    expected = {"error": {"message": message, "type": "invalid_request_error", "param": None,
                          "code": "invalid_request"}}
    assert orjson.loads(oai.client_fault(500, raw) or b"null") == expected
    assert oai.backend_status(500, raw) == 400
    status, body = OPENAI.backend_error(500, raw)
    assert status == 400 and orjson.loads(body) == expected
    assert isinstance(openai_error(status, body), openai.BadRequestError)


@pytest.mark.parametrize(("status", "raw"), [
    (500, b'{"error":{"code":500,"message":"slot unavailable","type":"server_error"}}'),  # no marker: a real 500
    (500, b"Invalid state"),  # a marker, but no JSON error body to take the message from
    (500, b'{"error":"Invalid state"}'),
    (400, BAD_IMAGE),  # only a 500 is reclassified
])
def test_no_client_fault(status: int, raw: bytes) -> None:
    assert oai.client_fault(status, raw) is None
    assert oai.backend_status(status, raw) == status


def test_501_is_a_400() -> None:
    assert oai.backend_status(501, NO_EMBEDDINGS) == 400
    status, body = OPENAI.backend_error(501, NO_EMBEDDINGS)
    assert status == 400 and openai_shape(body)["code"] == "not_supported"
    assert openai_shape(body)["message"].startswith("This server does not support embeddings")


@pytest.mark.parametrize(("raw", "text"), [
    (b"<html>Bad Gateway</html>\n", "<html>Bad Gateway</html>"),
    (b"", "HTTP 502"),
    (b"[1, 2]", "[1, 2]"),  # JSON, but no error object
    (b'{"error": "boom"}', '{"error": "boom"}'),
    (b"null", "null"),
    (b"caf\xc3\xa9 \xff", "café \ufffd"),
    (b"x" * 2000, "x" * 500),
])
def test_a_body_without_an_error_object(raw: bytes, text: str) -> None:
    status, body = oai.complete_error(502, raw)
    assert status == 502
    assert openai_shape(body) == {"message": f"The backend answered 502: {text}", "type": "server_error",
                                  "param": None, "code": None}
    assert isinstance(openai_error(status, body), openai.InternalServerError)


def test_a_non_json_501_names_the_status_the_backend_sent() -> None:
    status, body = oai.complete_error(501, b"Not Implemented")
    assert status == 400
    assert openai_shape(body)["message"] == "The backend answered 501: Not Implemented"


def test_complete_body_passes_as_the_same_bytes() -> None:
    raw = b'{"error": {"message": "x", "type": "invalid_request_error", "param": null, "code": "c", "more": 1}}'
    assert oai.complete_error(400, raw) == (400, raw)
    assert OPENAI.backend_error(404, raw) == (404, raw)


def test_missing_message_kept_param_and_extra_fields() -> None:
    raw = b'{"error": {"code": 400, "type": "invalid_request_error", "param": "tools", "detail": [1]}}'
    assert openai_shape(oai.complete_error(400, raw)[1]) == {
        "message": "HTTP 400", "type": "invalid_request_error", "param": "tools", "code": "invalid_request",
        "detail": [1]}


@pytest.mark.parametrize("case", [(400, CONTEXT), (500, BAD_IMAGE), (501, NO_EMBEDDINGS), (503, UNAVAILABLE),
                                  (502, b"gateway down"), (500, b'{"error": {"code": 500}}')])
def test_completing_twice_changes_nothing(case: tuple[int, bytes]) -> None:
    once = oai.complete_error(*case)
    assert oai.complete_error(*once) == once


@pytest.mark.parametrize("case", [(500, BAD_IMAGE), (503, UNAVAILABLE), (502, b"gateway down")])
def test_a_completed_stream_error_event_passes_unchanged(case: tuple[int, bytes]) -> None:
    event = b"data: " + oai.complete_error(*case)[1] + b"\n\n"
    assert oai.complete_stream_errors(event) == event


@pytest.mark.parametrize("case", [(400, CONTEXT), (501, NO_EMBEDDINGS)])
def test_a_completed_invalid_request_stream_event_passes_unchanged(case: tuple[int, bytes]) -> None:
    event = b"data: " + oai.complete_error(*case)[1] + b"\n\n"
    assert oai.complete_stream_errors(event) == event


# ---------------------------------------------------------------- mid-stream errors, OpenAI's shape

CHUNK = (b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,'
         b'"delta":{"content":"error"},"finish_reason":null}]}\n\n')  # "error" in the text: not an error event


def test_stream_error_event_is_completed_and_raised_by_the_sdk() -> None:
    out = OPENAI.stream_errors(CHUNK + b"data: " + CONTEXT + b"\n\n")
    assert out.startswith(CHUNK) and out.endswith(b"\n\n") and out.count(b"\n\n") == 2
    err = openai_shape(out[len(CHUNK) + 6:-2])
    assert err["code"] == "context_length_exceeded" and err["n_ctx"] == 512
    raised = openai_error(200, out, stream=True)
    assert raised.code == "context_length_exceeded" and raised.param == "messages"


@pytest.mark.parametrize(("raw", "kind", "code"), [
    (BAD_IMAGE, "invalid_request_error", "invalid_request"),
    (UNAVAILABLE, "service_unavailable", "backend_unavailable"),
    (b'{"error":{"message":"boom"}}', "server_error", None),  # no code: a 500
    (b'{"error":{"code":99,"message":"boom","type":"server_error"}}', "server_error", "backend_error"),
])
def test_stream_error_event_status_from_its_code(raw: bytes, kind: str, code: str | None) -> None:
    out = oai.complete_stream_errors(b"data: " + raw + b"\n\n")
    err = openai_shape(out[6:-2])
    assert (err["type"], err["code"]) == (kind, code)


def test_stream_without_error_events_is_the_same_object() -> None:
    chunk = CHUNK + b": ping\n\ndata: [DONE]\n\n"
    assert oai.complete_stream_errors(chunk) is chunk


def test_error_event_split_across_chunks_passes_as_it_came() -> None:
    event = b"data: " + CONTEXT + b"\n\n"
    for cut in (3, 8, 20, len(event) // 2, len(event) - 5, len(event) - 3):  # the JSON cut
        head, tail = CHUNK + event[:cut], event[cut:]
        assert oai.complete_stream_errors(head) == head and oai.complete_stream_errors(tail) == tail


def test_error_event_whole_but_its_blank_line_in_the_next_chunk() -> None:
    completed = oai.complete_stream_errors(b"data: " + CONTEXT + b"\n\n")
    assert oai.complete_stream_errors(b"data: " + CONTEXT) + b"\n\n" == completed


def test_error_event_split_inside_its_blank_line() -> None:
    completed = oai.complete_stream_errors(b"data: " + CONTEXT + b"\n\n")
    out = oai.complete_stream_errors(CHUNK + b"data: " + CONTEXT + b"\n") + oai.complete_stream_errors(b"\n")
    assert out == CHUNK + completed
    assert openai_error(200, out, stream=True).code == "context_length_exceeded"


def test_undecodable_error_event_passes_as_it_came() -> None:
    chunk = b'data: {"error": nonsense}\n\n'
    assert oai.complete_stream_errors(chunk) == chunk


# ---------------------------------------------------------------- llama-server's errors, Anthropic's shape

@pytest.mark.parametrize(("status", "raw", "out_status", "kind", "message"), [
    (400, CONTEXT, 400, "invalid_request_error",
     "request (600 tokens) exceeds the available context size (512 tokens), try increasing it"),
    (500, BAD_IMAGE, 400, "invalid_request_error", "Failed to load image or audio file"),  # a bad request
    (501, NO_EMBEDDINGS, 400, "invalid_request_error",
     "This server does not support embeddings. Start it with `--embeddings`"),
    (503, UNAVAILABLE, 503, "overloaded_error", "Loading model"),
    (500, b'{"error":{"code":500,"message":"boom","type":"server_error"}}', 500, "api_error", "boom"),
    (502, b"<html>Bad Gateway</html>", 502, "api_error", "<html>Bad Gateway</html>"),
    (502, b"", 502, "api_error", "The request failed with status 502."),
    (500, b"[1]", 500, "api_error", "The request failed with status 500."),
    (400, b'{"error": "plain text"}', 400, "invalid_request_error", "plain text"),
    (404, b'{"error":{"message":"x","type":"not_found_error","param":null,"code":"c"}}', 404, "not_found_error", "x"),
])
def test_anthropic_backend_error(status: int, raw: bytes, out_status: int, kind: str, message: str) -> None:
    got_status, body = ANTHROPIC.backend_error(status, raw)
    assert got_status == out_status
    assert anthropic_shape(body) == {"type": "error", "error": {"type": kind, "message": message}}
    raised = anthropic_error(got_status, body)
    assert raised.status_code == out_status and raised.body == orjson.loads(body)


def test_anthropic_backend_error_keeps_an_anthropic_body_as_the_same_bytes() -> None:
    raw = b'{"type": "error", "error": {"type": "overloaded_error", "message": "busy"}, "request_id": "r"}'
    assert ANTHROPIC.backend_error(529, raw) == (529, raw)
    assert ANTHROPIC.backend_error(501, raw) == (400, raw)  # the status is still the gateway's call


@pytest.mark.parametrize(("data", "message"), [
    ({"error": {"message": "m", "type": "t"}}, "m"),
    ({"type": "error", "error": {"type": "api_error", "message": "m"}}, "m"),
    ({"error": "m"}, "m"),
    ({"error": {"code": 500}}, "{'code': 500}"),
    ({"detail": "m"}, "The request failed with status 418."),
    (["m"], "The request failed with status 418."),
    (None, "The request failed with status 418."),
])
def test_message_of(data: Any, message: str) -> None:
    assert anth.message_of(418, data) == message


# ---------------------------------------------------------------- mid-stream errors, Anthropic's shape

B11434_ERROR = b"event: error\ndata: " + orjson.dumps(orjson.loads(CONTEXT)["error"])  # the bare object
START = (b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1","type":"message",'
         b'"role":"assistant","content":[],"model":"m","stop_reason":null,"stop_sequence":null,'
         b'"usage":{"input_tokens":3,"output_tokens":0}}}\n\n')


@pytest.mark.parametrize(("event", "kind", "message"), [
    (B11434_ERROR, "invalid_request_error",
     "request (600 tokens) exceeds the available context size (512 tokens), try increasing it"),
    (b'event: error\ndata: {"code":500,"message":"boom","type":"server_error"}', "api_error", "boom"),
    (b"data: " + UNAVAILABLE, "overloaded_error", "Loading model"),  # OpenAI's chat form
    (b'data: {"error":"boom"}', "api_error", "boom"),
    (b'event: error\ndata: "boom"', "api_error", "boom"),
    (b'event: error\ndata: {"code":"x","message":"m"}', "api_error", "m"),  # not an int code: a 500
    (b'event: error\ndata: {"code":500,"mes', "api_error", "The request failed with status 500."),  # undecodable
    (b'event: error\ndata: {"type":"error","error":{"type":"rate_limit_error","message":"slow"}}',
     "rate_limit_error", "slow"),  # already Anthropic's
])
def test_stream_error(event: bytes, kind: str, message: str) -> None:
    assert anth.is_error(event)
    out = anth.stream_error(event)
    assert out.startswith(b"event: error\ndata: ") and out.endswith(b"\n\n") and out.count(b"\n\n") == 1
    assert anthropic_shape(out[len(b"event: error\ndata: "):-2]) == {
        "type": "error", "error": {"type": kind, "message": message}}


@pytest.mark.parametrize("event", [START, b": ping", b"event: ping\ndata: {}", b'data: {"choices":[]}',
                                   b'event: content_block_delta\ndata: {"error":1}'])
def test_not_an_error_event(event: bytes) -> None:
    assert not anth.is_error(event)


def test_anthropic_stream_errors_rewrites_error_events_only() -> None:
    delta = (b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
             b'"delta":{"type":"text_delta","text":"error"}}\n\n')
    out = ANTHROPIC.stream_errors(START + delta + B11434_ERROR + b"\n\n")
    assert out.startswith(START + delta) and out.endswith(b"\n\n")
    assert out[len(START + delta):] == anth.stream_error(B11434_ERROR)
    raised = anthropic_error(200, out, stream=True)
    assert type(raised) is anthropic.APIStatusError and raised.body == {
        "type": "error", "error": {"type": "invalid_request_error", "message": "request (600 tokens) exceeds the "
                                  "available context size (512 tokens), try increasing it"}}
    assert ANTHROPIC.stream_errors(START + delta) == START + delta
    chunk = START + b": ping\n\n"
    assert ANTHROPIC.stream_errors(chunk) is chunk  # no "error" anywhere: not even split


def test_anthropic_error_event_split_across_chunks_passes_as_it_came() -> None:
    event = B11434_ERROR + b"\n\n"
    cut = len(b'event: error\ndata: {"code":400,"mes')
    head, tail = START + event[:cut], event[cut:]
    assert ANTHROPIC.stream_errors(head) + ANTHROPIC.stream_errors(tail) == head + tail
