"""What a Responses (or Anthropic Messages) request costs over a chat request through the gateway, same run.

    python bench/routes_bench.py [--requests 400] [--tokens 32]

A very fast fake llama-server (in this process, aiohttp) answers every route with b11434's exact shapes
(a chat completion, a Responses object and its event stream, an Anthropic message and its events);
`vlgate serve` runs in front of it. One client, one request at a time; the routes take turns request by
request, so every route sees the same machine state. Reported: p50 / mean latency per route and mode,
directly against the fake and through the gateway; the gateway's share is the difference.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from aiohttp import web
from common import free_port, wait_http

RESP, MSG = "resp_bench", "msg_bench"


def _sse(name: str | None, data: dict[str, Any]) -> bytes:
    return (f"event: {name}\n" if name else "").encode() + b"data: " + json.dumps(data).encode() + b"\n\n"


def chat_answer(tokens: int, stream: bool) -> bytes:
    if not stream:
        return json.dumps({"id": "c", "object": "chat.completion", "created": 1, "model": "fake", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "tok " * tokens}, "finish_reason": "length"}],
            "usage": {"prompt_tokens": 9, "completion_tokens": tokens, "total_tokens": 9 + tokens}}).encode()
    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "fake",
             "choices": [{"index": 0, "delta": {"content": "tok "}, "finish_reason": None}]}
    return b"".join(_sse(None, chunk) for _ in range(tokens)) + b"data: [DONE]\n\n"


def responses_answer(tokens: int, stream: bool) -> bytes:
    part = {"type": "output_text", "annotations": [], "logprobs": [], "text": "tok " * tokens}
    item = {"content": [part], "id": MSG, "role": "assistant", "status": "completed", "type": "message"}
    usage = {"input_tokens": 9, "output_tokens": tokens, "total_tokens": 9 + tokens,
             "input_tokens_details": {"cached_tokens": 0}}
    final = {"id": RESP, "object": "response", "created_at": 1, "status": "completed", "model": "fake",
             "output": [item], "usage": usage}
    if not stream:
        return json.dumps({**final, "completed_at": 1}).encode()
    small = {"id": RESP, "object": "response", "status": "in_progress"}
    out = [_sse("response.created", {"type": "response.created", "response": small}),
           _sse("response.in_progress", {"type": "response.in_progress", "response": small}),
           _sse("response.output_item.added", {"type": "response.output_item.added", "item": {
               "content": [], "id": MSG, "role": "assistant", "status": "in_progress", "type": "message"}}),
           _sse("response.content_part.added", {"type": "response.content_part.added", "item_id": MSG,
                                                 "part": {"type": "output_text", "text": ""}})]
    out += [_sse("response.output_text.delta", {"type": "response.output_text.delta", "item_id": MSG,
                                                "delta": "tok "}) for _ in range(tokens)]
    out += [_sse("response.output_text.done", {"type": "response.output_text.done", "item_id": MSG,
                                               "text": part["text"]}),
            _sse("response.content_part.done", {"type": "response.content_part.done", "item_id": MSG, "part": part}),
            _sse("response.output_item.done", {"type": "response.output_item.done", "item": item}),
            _sse("response.completed", {"type": "response.completed", "response": final})]
    return b"".join(out)


def messages_answer(tokens: int, stream: bool) -> bytes:
    usage = {"cache_read_input_tokens": 0, "input_tokens": 9, "output_tokens": tokens}
    message = {"id": "m", "type": "message", "role": "assistant", "model": "fake", "stop_reason": "max_tokens",
               "stop_sequence": None, "usage": usage, "content": [{"type": "text", "text": "tok " * tokens}]}
    if not stream:
        return json.dumps(message).encode()
    out = [_sse("message_start", {"type": "message_start", "message": {**message, "content": [], "stop_reason": None}}),
           _sse("content_block_start", {"type": "content_block_start", "index": 0,
                                        "content_block": {"type": "text", "text": ""}})]
    out += [_sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                         "delta": {"type": "text_delta", "text": "tok "}}) for _ in range(tokens)]
    out += [_sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
            _sse("message_delta", {"type": "message_delta", "delta": {"stop_reason": "max_tokens",
                                                                       "stop_sequence": None},
                                   "usage": {"output_tokens": tokens}}),
            _sse("message_stop", {"type": "message_stop"})]
    return b"".join(out)


ROUTES = {"chat": ("/v1/chat/completions", chat_answer, {"messages": [{"role": "user", "content": "hello"}]}),
          "responses": ("/v1/responses", responses_answer, {"input": "hello"}),
          "messages": ("/v1/messages", messages_answer,
                       {"max_tokens": 32, "messages": [{"role": "user", "content": "hello"}]})}


def fake_backend(port: int, tokens: int) -> None:
    """The fake llama-server, answers precomputed; runs forever in a daemon thread."""
    answers = {(path, stream): fn(tokens, stream) for path, fn, _ in ROUTES.values() for stream in (False, True)}

    async def answer(request: web.Request) -> web.Response:
        stream = (await request.json()).get("stream") is True
        return web.Response(body=answers[(request.path, stream)],
                            content_type="text/event-stream" if stream else "application/json")

    app = web.Application()
    app.router.add_get("/health", lambda _r: web.json_response({"status": "ok"}))
    app.router.add_get("/slots", lambda _r: web.json_response([{"id": i, "is_processing": False} for i in range(64)]))
    app.router.add_get("/props", lambda _r: web.json_response({"total_slots": 64}))
    app.router.add_get("/v1/models", lambda _r: web.json_response({"object": "list", "data": []}))
    for path, _, _ in ROUTES.values():
        app.router.add_post(path, answer)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app, access_log=None)
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
    loop.run_forever()


def measure(base: str, requests: int) -> dict[tuple[str, bool], list[float]]:
    times: dict[tuple[str, bool], list[float]] = {(r, s): [] for r in ROUTES for s in (False, True)}
    with httpx.Client(base_url=base, timeout=10) as client:
        for i in range(requests + 20):  # 20 rounds of warm-up, not counted
            for route, (path, _, body) in ROUTES.items():
                for stream in (False, True):
                    t0 = time.perf_counter()
                    r = client.post(path, json={"model": "fake", "stream": stream, **body})
                    assert r.status_code == 200, r.text
                    if i >= 20:
                        times[(route, stream)].append(time.perf_counter() - t0)
    return times


def rewrite_cost(tokens: int, n: int = 2000) -> list[tuple[str, float]]:
    """CPU per answer of what the Responses and Anthropic routes add (in this process: no network noise)."""
    from vlgate.gateway.apis.anthropic.schemas import validate_messages
    from vlgate.gateway.apis.anthropic.stream import AnthropicStreamTap
    from vlgate.gateway.apis.openai.schemas import ChatCompletionRequest, validate
    from vlgate.gateway.apis.responses.completion import Echo, complete_response_bytes
    from vlgate.gateway.apis.responses.schemas import validate_responses
    from vlgate.gateway.apis.responses.stream import ResponsesStreamRewriter

    body = {"model": "fake", "input": "hello", "max_output_tokens": 32}
    answer, stream, anthropic_stream = (responses_answer(tokens, False), responses_answer(tokens, True),
                                        messages_answer(tokens, True))
    jobs: list[tuple[str, Any]] = [
        ("chat: validate request",
         lambda: validate(ChatCompletionRequest, {"messages": ROUTES["chat"][2]["messages"]})),
        ("responses: validate request", lambda: validate_responses(dict(body))),
        ("messages: validate request", lambda: validate_messages({"model": "fake", **ROUTES["messages"][2]})),
        ("responses: complete non-stream answer",
         lambda: complete_response_bytes(answer, Echo.of(body))),
        ("responses: rewrite stream", lambda: ResponsesStreamRewriter(Echo.of(body)).feed(stream)),
        ("messages: pass stream through the tap", lambda: AnthropicStreamTap().feed(anthropic_stream)),
    ]
    out = []
    for name, job in jobs:
        t0 = time.perf_counter()
        for _ in range(n):
            job()
        out.append((name, (time.perf_counter() - t0) / n))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=400, help="per route and mode")
    ap.add_argument("--tokens", type=int, default=32, help="tokens per answer (stream events)")
    args = ap.parse_args()
    fake_port, gw_port = free_port(), free_port()
    threading.Thread(target=fake_backend, args=(fake_port, args.tokens), daemon=True).start()
    wait_http(f"http://127.0.0.1:{fake_port}/health")
    log = Path(tempfile.mkdtemp(prefix="routes-bench-")) / "gateway.log"
    with open(log, "wb") as out:
        gw = subprocess.Popen([sys.executable, "-m", "vlgate.cli", "serve", "--backend", f"http://127.0.0.1:{fake_port}",
                               "--slots", "64", "--port", str(gw_port), "--model", "fake", "--log-level", "warning"],
                              stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{gw_port}/ready")
        direct = measure(f"http://127.0.0.1:{fake_port}", args.requests)
        through = measure(f"http://127.0.0.1:{gw_port}", args.requests)
    finally:
        gw.terminate()
        gw.wait(30)
    print(f"{args.requests} requests per row, {args.tokens} tokens, concurrency 1; latency in ms")
    print("| route | mode | direct p50 | gateway p50 | gateway mean | gateway share (p50) | vs chat (p50) |")
    print("|---|---|---|---|---|---|---|")
    for stream in (False, True):
        chat = statistics.median(through[("chat", stream)]) - statistics.median(direct[("chat", stream)])
        for route in ROUTES:
            d, g = direct[(route, stream)], through[(route, stream)]
            share = statistics.median(g) - statistics.median(d)
            print(f"| {route} | {'stream' if stream else 'non-stream'} | {statistics.median(d) * 1e3:.2f} | "
                  f"{statistics.median(g) * 1e3:.2f} | {statistics.mean(g) * 1e3:.2f} | {share * 1e3:.2f} | "
                  f"{(share - chat) * 1e3:+.2f} |")
    print(f"\nCPU per request, in-process ({args.tokens}-token answers, whole answer in one chunk):")
    for name, seconds in rewrite_cost(args.tokens):
        print(f"- {name}: {seconds * 1e6:.0f} µs")


if __name__ == "__main__":
    main()
