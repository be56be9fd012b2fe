"""A scriptable fake llama-server, only for faults a real one cannot show on demand.

Hang before headers, die after N stream chunks, answer garbage, stay "Loading model" forever,
and record what reached it (paths, headers, bodies) so tests can prove nothing did.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from support.llama import free_port


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class FakeBackend:
    # ok | loading | hang | die_after | stall_after | cut_body | garbage | status | late_end (a stream's
    # terminating chunk comes 1 s after its [DONE], as a busy server's may)
    mode: str = "ok"
    die_after: int = 2
    status: int = 500
    status_body: bytes = b'{"error":{"code":500,"message":"boom","type":"server_error"}}'
    slots: int = 2
    delay_s: float = 0.0
    reply: str | None = None  # model-style text to answer with (presets), else "fake answer"
    wedged: bool = False  # /slots: slot 0 processing, its progress frozen (the watchdog's case); /health stays 200
    # reply per request (multi-step presets): text, a status to fail with, or (seconds, either) to answer late
    script: Callable[[dict[str, Any]], Any] | None = None
    seen: list[Seen] = field(default_factory=list)
    connections: int = 0

    def __post_init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> FakeBackend:
        self._thread.start()
        assert self._started.wait(10), "fake backend did not start"
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    async def _shutdown(self) -> None:
        self._server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", self.port))
        self._started.set()
        self._loop.run_forever()

    def chat_requests(self) -> list[Seen]:
        """Work that reached the backend (the gateway's own GET /v1/models polls do not count)."""
        return [s for s in self.seen if s.path.startswith("/v1/") and s.method == "POST"]

    # -- HTTP -------------------------------------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                self.seen.append(Seen(method, path, headers, body))
                if not await self._answer(method, path, body, writer):
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _answer(self, method: str, path: str, body: bytes, w: asyncio.StreamWriter) -> bool:
        if path.startswith("/health"):
            if self.mode == "loading":
                return _send(w, 503, b'{"error":{"code":503,"message":"Loading model","type":"unavailable_error"}}')
            return _send(w, 200, b'{"status":"ok"}')
        if path.startswith("/slots"):
            slots = [{"id": i, "is_processing": False} for i in range(self.slots)]
            if self.wedged:
                slots[0].update(is_processing=True, id_task=7, n_prompt_tokens_processed=12,
                                next_token=[{"has_next_token": True, "n_remain": 100, "n_decoded": 3}])
            return _send(w, 200, json.dumps(slots).encode())
        if path.startswith("/props"):
            return _send(w, 200, json.dumps({"total_slots": self.slots}).encode())
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.mode == "loading":
            return _send(w, 503, b'{"error":{"code":503,"message":"Loading model","type":"unavailable_error"}}')
        if self.mode == "hang":
            await asyncio.sleep(3600)
            return False
        if self.mode == "garbage":
            w.write(b"\x00\x01 this is not HTTP \r\n\r\n")
            return False
        if self.mode == "cut_body":  # headers promise 1000 bytes, 10 arrive, the connection dies
            w.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"id\": \"x")
            await w.drain()
            w.transport.abort()
            return False
        if self.mode == "status":
            return _send(w, self.status, self.status_body)
        req = json.loads(body or b"{}")
        if req.get("stream"):
            return await self._stream(w, req)
        reply = self.script(req) if self.script is not None else self.reply
        if isinstance(reply, tuple):  # (seconds, reply): a script's slow answer
            await asyncio.sleep(reply[0])
            reply = reply[1]
        if isinstance(reply, int):  # a script's way to fail one request: that status, `status_body`
            return _send(w, reply, self.status_body)
        return _send(w, 200, json.dumps(_completion(req, reply)).encode())

    async def _stream(self, w: asyncio.StreamWriter, req: dict[str, Any]) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        n = 8 if self.mode not in ("die_after", "stall_after", "error_after") else self.die_after
        pieces = [f"t{i} " for i in range(n)]
        if self.reply is not None:
            pieces = [self.reply[i:i + 7] for i in range(0, len(self.reply), 7)]
        for piece in pieces:
            chunk = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": int(time.time()),
                     "model": req.get("model") or "fake",
                     "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
            _chunk(w, b"data: " + json.dumps(chunk).encode() + b"\n\n")
            await w.drain()
            await asyncio.sleep(0.01)
        if self.mode == "die_after":
            w.transport.abort()  # no terminating chunk: the connection just dies
            return False
        if self.mode == "error_after":  # llama-server's own mid-stream failure: an error event, no [DONE]
            _chunk(w, b'data: {"error":{"code":500,"message":"decode failed","type":"server_error"}}\n\n')
            w.write(b"0\r\n\r\n")
            return True
        if self.mode == "stall_after":
            await asyncio.sleep(3600)  # alive, silent
            return False
        done = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": int(time.time()),
                "model": req.get("model") or "fake", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        _chunk(w, b"data: " + json.dumps(done).encode() + b"\n\n")
        _chunk(w, b"data: [DONE]\n\n")
        if self.mode == "late_end":
            await w.drain()
            await asyncio.sleep(1.0)
        w.write(b"0\r\n\r\n")
        return True


def _chunk(w: asyncio.StreamWriter, data: bytes) -> None:
    w.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")


def _send(w: asyncio.StreamWriter, status: int, body: bytes, ctype: str = "application/json") -> bool:
    w.write(f"HTTP/1.1 {status} X\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    return True


def _completion(req: dict[str, Any], reply: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()),
        "model": req.get("model") or "fake",
        "choices": [{"index": 0,
                     "message": {"role": "assistant", "content": reply if reply is not None else "fake answer"},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }
