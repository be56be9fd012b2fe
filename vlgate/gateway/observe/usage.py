"""Usage per API key name: requests by status, prompt/completion tokens, images. Never the key itself.

Tokens come from what the backend reported: the `usage` object of a non-stream answer, and for streams
the `usage` (or llama-server's `timings`) in the stream's first and last bytes, kept by `StreamEnds` as
the bytes pass through. Nothing is parsed on the hot path, and at finish only those small objects are:
found by `bytes.rfind` near the end and cut out by brace matching, so neither a long answer nor a
Responses `response.completed` event carrying the whole text is parsed (or needs to fit the tail).
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Counter

from vlgate.gateway.observe.metrics import Children

ANONYMOUS = "anonymous"  # requests without a valid key (no keys configured, or refused with 401)
_HEAD_BYTES = 4096  # Anthropic streams report input tokens in their first event
_TAIL_BYTES = 16384  # usage/timings come in the last events (before [DONE])
_OBJECT_BYTES = 2048  # a usage/timings object is a few hundred bytes
_USAGE, _TIMINGS = b'"usage"', b'"timings"'


class StreamEnds:
    """The first and last bytes of a stream, bounded (a long stream costs no memory)."""

    __slots__ = ("events", "head", "tail", "tail_size")

    def __init__(self) -> None:
        self.head = b""
        self.tail: deque[bytes] = deque()
        self.tail_size = 0
        self.events = 0  # `data:` events so far: llama-server streams one per generated token

    def feed(self, chunk: bytes) -> None:
        self.events += chunk.count(b"data: ")
        if len(self.head) < _HEAD_BYTES:
            self.head += chunk[: _HEAD_BYTES - len(self.head)]
        self.tail.append(chunk)
        self.tail_size += len(chunk)
        while self.tail_size - len(self.tail[0]) >= _TAIL_BYTES:
            self.tail_size -= len(self.tail.popleft())


# the value of a key: an object nested at most 3 deep (usage objects nest 2); numbers and short names only, so a
# brace inside a string does not occur. Possessive runs (Python 3.11+): no backtracking, and a run of
# non-braces is one step, not one per character (6.1 -> 1.1 µs on a usage object, timeit)
_OBJECT = re.compile(rb"[ \t\r\n]*:[ \t\r\n]*(\{(?:[^{}]++|\{(?:[^{}]++|\{[^{}]*+\})*+\})*+\})")


def _object_at(data: bytes, pos: int) -> dict[str, Any] | None:
    """The JSON object that is the value of the key ending at `pos` (`"usage": {...}`), else None."""
    match = _OBJECT.match(data, pos, pos + _OBJECT_BYTES)
    if match is None:
        return None  # "usage": null, or cut off
    try:
        obj = orjson.loads(match.group(1))
    except orjson.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


def find_object(data: bytes, key: bytes, *, first: bool = False) -> dict[str, Any] | None:
    """The last (or first) `key: {...}` object in `data`; a key inside a string (`\\"usage\\"`) is skipped."""
    pos = data.find(key) if first else data.rfind(key)
    while pos != -1:
        if pos == 0 or data[pos - 1] != ord("\\"):
            obj = _object_at(data, pos + len(key))
            if obj is not None:
                return obj
        pos = data.find(key, pos + 1) if first else data.rfind(key, 0, pos)
    return None


@dataclass(slots=True)
class Tokens:
    prompt: int = 0
    completion: int = 0


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def tokens_of(usages: list[dict[str, Any]], timings: dict[str, Any] | None) -> Tokens | None:
    """Prompt and completion tokens: from `usage` objects (OpenAI, Responses and Anthropic spellings; the
    later one wins, an Anthropic stream splits them over its first and last events), else from `timings`."""
    found = Tokens()
    seen = False
    for usage in usages:
        prompt = _count(usage.get("prompt_tokens", usage.get("input_tokens")))
        completion = _count(usage.get("completion_tokens", usage.get("output_tokens")))
        if prompt:
            found.prompt, seen = prompt, True
        if completion is not None:
            found.completion, seen = max(found.completion, completion), True
    if seen or timings is None:
        return found if seen else None
    completion = _count(timings.get("predicted_n"))
    if completion is None:
        return None
    # prompt_n leaves out the cached prefix: usage counts it
    return Tokens((_count(timings.get("prompt_n")) or 0) + (_count(timings.get("cache_n")) or 0), completion)


def answer_tokens(answer: bytes | None, ends: StreamEnds | None) -> Tokens | None:
    """Tokens of a non-stream answer (`answer`) or of a stream (`ends`)."""
    if ends is not None:
        tail = b"".join(ends.tail)
        usages = [u for u in (find_object(ends.head, _USAGE, first=True), find_object(tail, _USAGE)) if u]
        return tokens_of(usages, find_object(tail, _TIMINGS))
    if answer:
        usage = find_object(answer, _USAGE)
        return tokens_of([usage], None) if usage else tokens_of([], find_object(answer, _TIMINGS))
    return None


def charged_tokens(answer: bytes | None, ends: StreamEnds | None, spent: Tokens | None, status: int) -> Tokens | None:
    """What a request cost in tokens: the summed usage of a pipeline's own backend calls (`spent`), else
    what the backend reported; a stream the client left (499) before its usage came is charged the
    events generated so far (one token each: a slight over-count of the few non-token events)."""
    if spent is not None:
        return spent
    if status >= 400 and status != 499:
        return None
    tokens = answer_tokens(answer, ends)
    if tokens is None and status == 499 and ends is not None and ends.events:
        return Tokens(0, ends.events)
    return tokens


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
        self._requests, self._prompt = Children(self.requests), Children(self.prompt)
        self._completion, self._images = Children(self.completion), Children(self.images)

    def record(self, key: str | None, status: int, tokens: Tokens | None, images: int) -> None:
        name = key or ANONYMOUS
        totals = self.totals.setdefault(name, KeyTotals())
        totals.requests[str(status)] = totals.requests.get(str(status), 0) + 1
        self._requests(name, status).inc()
        if tokens is not None:
            totals.prompt_tokens += tokens.prompt
            totals.completion_tokens += tokens.completion
            self._prompt(name).inc(tokens.prompt)
            self._completion(name).inc(tokens.completion)
        if images:
            totals.images += images
            self._images(name).inc(images)

    def describe(self) -> list[dict[str, Any]]:
        return [{"name": name, "requests": dict(t.requests), "prompt_tokens": t.prompt_tokens,
                 "completion_tokens": t.completion_tokens, "images": t.images}
                for name, t in sorted(self.totals.items())]
