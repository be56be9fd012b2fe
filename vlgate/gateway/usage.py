"""Usage per API key name: requests by status, prompt/completion tokens, images. Never the key itself.

Tokens come from what the backend reported: the `usage` of a non-stream answer, and for streams the
usage (or llama-server's `timings`) in the stream's first and last events, kept by `StreamEnds` as
the bytes pass through — no event is parsed on the hot path, only the ends at finish.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Counter

ANONYMOUS = "anonymous"  # requests without a valid key (no keys configured, or refused with 401)
_HEAD_BYTES = 4096  # Anthropic streams report input tokens in their first event
_TAIL_BYTES = 16384  # usage/timings come in the last events (before [DONE])


class StreamEnds:
    """The first and last bytes of a stream, bounded (a long stream costs no memory)."""

    __slots__ = ("head", "tail", "tail_size")

    def __init__(self) -> None:
        self.head = b""
        self.tail: deque[bytes] = deque()
        self.tail_size = 0

    def feed(self, chunk: bytes) -> None:
        if len(self.head) < _HEAD_BYTES:
            self.head += chunk[: _HEAD_BYTES - len(self.head)]
        self.tail.append(chunk)
        self.tail_size += len(chunk)
        while self.tail_size - len(self.tail[0]) >= _TAIL_BYTES:
            self.tail_size -= len(self.tail.popleft())

    def events(self) -> list[dict[str, Any]]:
        """The JSON `data:` events found in the head and the tail (a cut-off event is skipped)."""
        out = []
        for part in (self.head, b"".join(self.tail)):
            for line in part.split(b"\n"):
                if line.startswith(b"data:") and line[5:].strip()[:1] == b"{":
                    try:
                        event = orjson.loads(line[5:])
                    except orjson.JSONDecodeError:
                        continue
                    if isinstance(event, dict):
                        out.append(event)
        return out


@dataclass(slots=True)
class Tokens:
    prompt: int = 0
    completion: int = 0


def _usage_dict(obj: dict[str, Any]) -> dict[str, Any] | None:
    """`usage` of OpenAI chat/completions, Responses (`response.usage`) and Anthropic (`message.usage`)."""
    for holder in (obj, obj.get("response"), obj.get("message")):
        if isinstance(holder, dict) and isinstance(holder.get("usage"), dict):
            return holder["usage"]
    return None


def tokens_of(objects: list[dict[str, Any]]) -> Tokens | None:
    """Prompt and completion tokens from the answer's objects: `usage` first, llama-server `timings` else."""
    found = Tokens()
    seen = False
    for obj in objects:
        usage = _usage_dict(obj)
        if usage is not None:
            prompt = usage.get("prompt_tokens", usage.get("input_tokens"))
            completion = usage.get("completion_tokens", usage.get("output_tokens"))
        elif isinstance(obj.get("timings"), dict):  # a stream without include_usage
            timings = obj["timings"]  # prompt_n leaves out the cached prefix: usage counts it
            prompt = (timings.get("prompt_n") or 0) + (timings.get("cache_n") or 0)
            completion = timings.get("predicted_n")
        else:
            continue
        if isinstance(prompt, int) and prompt > 0:
            found.prompt, seen = prompt, True
        if isinstance(completion, int) and completion >= 0:
            found.completion, seen = max(found.completion, completion), True
    return found if seen else None


def answer_tokens(answer: bytes | None, ends: StreamEnds | None) -> Tokens | None:
    if ends is not None:
        return tokens_of(ends.events())
    if answer:
        try:
            obj = orjson.loads(answer)
        except orjson.JSONDecodeError:
            return None
        return tokens_of([obj]) if isinstance(obj, dict) else None
    return None


@dataclass
class KeyTotals:
    """One key's totals, for the status page (Prometheus has the same as counters)."""

    requests: dict[str, int] = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    images: int = 0


class KeyUsage:
    """Counters per key name, in the gateway's registry and as plain totals for /status."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter("vlgate_key_requests", "Requests per API key name and status", ["key", "status"],
                                registry=registry)
        self.prompt = Counter("vlgate_key_prompt_tokens", "Prompt tokens the backends reported, per API key name",
                              ["key"], registry=registry)
        self.completion = Counter("vlgate_key_completion_tokens",
                                  "Completion tokens the backends reported, per API key name", ["key"],
                                  registry=registry)
        self.images = Counter("vlgate_key_images", "Images sent, per API key name", ["key"], registry=registry)
        self.totals: dict[str, KeyTotals] = {}

    def record(self, key: str | None, status: int, tokens: Tokens | None, images: int) -> None:
        name = key or ANONYMOUS
        totals = self.totals.setdefault(name, KeyTotals())
        totals.requests[str(status)] = totals.requests.get(str(status), 0) + 1
        self.requests.labels(name, str(status)).inc()
        if tokens is not None:
            totals.prompt_tokens += tokens.prompt
            totals.completion_tokens += tokens.completion
            self.prompt.labels(name).inc(tokens.prompt)
            self.completion.labels(name).inc(tokens.completion)
        if images:
            totals.images += images
            self.images.labels(name).inc(images)

    def describe(self) -> list[dict[str, Any]]:
        return [{"name": name, "requests": dict(t.requests), "prompt_tokens": t.prompt_tokens,
                 "completion_tokens": t.completion_tokens, "images": t.images}
                for name, t in sorted(self.totals.items())]
