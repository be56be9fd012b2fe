"""Complete llama-server's Anthropic stream events for the anthropic SDK (strict), rewrite its error events.

b11434 starts a `tool_use` block without `input` and a `thinking` block without `signature` (both
required by the SDK's content block models; Anthropic sends `{}` and `""`), and sends mid-stream
errors as `event: error` with OpenAI's fields. Every other event passes through as the same bytes.
"""

from __future__ import annotations

from vlgate.gateway.apis.anthropic.errors import is_error, stream_error
from vlgate.gateway.endpoint import sse

_BLOCK_DEFAULTS = {"tool_use": ("input", {}), "thinking": ("signature", ""), "text": ("text", "")}


class AnthropicStreamTap:
    def __init__(self) -> None:
        self._split = sse.EventSplitter()

    def feed(self, chunk: bytes) -> bytes:
        return b"".join(self._one(event) for event in self._split.feed(chunk))

    def flush(self) -> bytes:
        return self._split.rest()

    def _one(self, event: bytes) -> bytes:
        if is_error(event):
            return stream_error(event)
        if event.startswith(b"event: content_block_start"):
            name, data = sse.parse(event)
            block = data.get("content_block") if isinstance(data, dict) else None
            if isinstance(block, dict) and block.get("type") in _BLOCK_DEFAULTS:
                key, default = _BLOCK_DEFAULTS[block["type"]]
                block.setdefault(key, default)
                return sse.event(name, data)
        return event + b"\n\n"
