"""A fake llama-server whose generation can freeze while `/health` stays 200 (llama.cpp #27388).

A real llama-server cannot wedge on demand, and FakeBackend's `wedged=True` only fakes `/slots`. Here
the two agree, as in the real bug: every chat request holds a slot and decodes `tokens` tokens one by
one; while `frozen`, no slot decodes (streams go silent after their headers, non-stream answers never
come) and `/slots` shows those slots processing with frozen progress. Thawed, the same generations go on.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

from support.fakebackend import FakeBackend, _chunk, _completion, _send


@dataclass
class Generation:
    """One request in a slot, as `/slots` shows it."""

    slot: int
    task: int
    stream: bool
    decoded: int = 0


@dataclass
class WedgedBackend(FakeBackend):
    tokens: int = 6
    token_s: float = 0.02
    frozen: bool = False  # set from the test's thread: generation stops, /health and /slots still answer
    busy: dict[int, Generation] = field(default_factory=dict)
    tasks: int = 0
    completed: int = 0  # generations that decoded all their tokens (during or after a freeze)

    async def _answer(self, method: str, path: str, body: bytes, w: asyncio.StreamWriter) -> bool:
        if path.startswith("/slots"):
            return _send(w, 200, json.dumps(self.slots_doc()).encode())
        if method == "POST" and path.startswith("/v1/chat/completions"):
            return await self._generate(w, json.loads(body or b"{}"))
        return await super()._answer(method, path, body, w)

    def slots_doc(self) -> list[dict[str, Any]]:
        doc: list[dict[str, Any]] = []
        for i in range(self.slots):
            gen = self.busy.get(i)
            if gen is None:
                doc.append({"id": i, "is_processing": False})
            else:
                doc.append({"id": i, "is_processing": True, "id_task": gen.task, "n_prompt_tokens_processed": 12,
                            "next_token": [{"has_next_token": True, "n_remain": self.tokens - gen.decoded,
                                            "n_decoded": gen.decoded}]})
        return doc

    def holding(self) -> set[str]:
        """What it generates now: "stream" (a stream past its first token: headers sent), "plain" (non-stream)."""
        return {"plain" if not g.stream else "stream" for g in list(self.busy.values()) if not g.stream or g.decoded}

    async def _take_slot(self, stream: bool) -> Generation:
        """A free slot; with none free the request waits, as llama-server queues it."""
        while True:
            free = [i for i in range(self.slots) if i not in self.busy]
            if free:
                self.tasks += 1
                gen = self.busy[free[0]] = Generation(free[0], self.tasks, stream)
                return gen
            await asyncio.sleep(0.01)

    async def _decode(self, gen: Generation) -> None:
        await asyncio.sleep(self.token_s)
        while self.frozen:  # checked after the token's time too: a freeze stops the token being decoded
            await asyncio.sleep(0.01)
        gen.decoded += 1

    async def _generate(self, w: asyncio.StreamWriter, req: dict[str, Any]) -> bool:
        gen = await self._take_slot(bool(req.get("stream")))
        model = req.get("model") or "fake"
        try:
            for i in range(self.tokens):
                await self._decode(gen)
                if req.get("stream"):
                    if i == 0:  # llama-server sends a stream's headers with its first token
                        w.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                                b"Transfer-Encoding: chunked\r\n\r\n")
                    chunk = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": int(time.time()),
                             "model": model, "choices": [{"index": 0, "delta": {"content": f"t{i} "},
                                                          "finish_reason": None}]}
                    _chunk(w, b"data: " + json.dumps(chunk).encode() + b"\n\n")
                    await w.drain()
            self.completed += 1
        finally:
            del self.busy[gen.slot]
        if not req.get("stream"):
            return _send(w, 200, json.dumps(_completion(req)).encode())
        done = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": int(time.time()),
                "model": model, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": self.tokens, "total_tokens": 3 + self.tokens}}
        _chunk(w, b"data: " + json.dumps(done).encode() + b"\n\n")
        _chunk(w, b"data: [DONE]\n\n")
        w.write(b"0\r\n\r\n")
        return True
