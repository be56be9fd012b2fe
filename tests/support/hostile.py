"""A fake llama-server whose chat answers break HTTP/1.1 framing on purpose (wire.py's attacker probe).

It is the recording FakeBackend for everything else (/health, /slots, /props); only POST /v1/... answers
follow `mode`, which a test may change between requests:
- "early_hints": `103 Early Hints` first, then the answer; the answer echoes the request's last user message,
  so each user can tell their own answer from another's
- "stall_body": headers and half of a non-stream body, then silence (the connection stays open)
- "many_headers": a normal answer with `extra_headers` header fields
- "ok": a normal answer, echoing the user's message
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

from support.fakebackend import FakeBackend


def echo_answer(req: dict) -> bytes:
    """A chat completion whose content is the last user message: whose answer it is shows in it."""
    content = req["messages"][-1]["content"]
    return json.dumps({
        "id": "chatcmpl-hostile", "object": "chat.completion", "created": 0, "model": "fake",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": f"echo: {content}"},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }).encode()


@dataclass
class HostileBackend(FakeBackend):
    extra_headers: int = 200

    async def _answer(self, method: str, path: str, body: bytes, w: asyncio.StreamWriter) -> bool:
        if not (method == "POST" and path.startswith("/v1/")) or self.mode not in (
                "early_hints", "stall_body", "many_headers", "ok"):
            return await super()._answer(method, path, body, w)
        answer = echo_answer(json.loads(body))
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n" % len(answer)
        if self.mode == "early_hints":
            w.write(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload; as=style\r\n\r\n")
            await w.drain()
            await asyncio.sleep(0.05)  # the interim answer arrives on its own
        elif self.mode == "stall_body":
            w.write(head + b"\r\n" + answer[: len(answer) // 2])
            await w.drain()
            await asyncio.sleep(3600)  # alive, silent
            return False
        elif self.mode == "many_headers":
            head += b"".join(b"X-Filler-%d: %d\r\n" % (i, i) for i in range(self.extra_headers))
        w.write(head + b"\r\n" + answer)
        return True
