"""A batch input file (JSONL), read and checked line by line, with the line number in every complaint.

Each non-blank line is one request: `{"custom_id": str, "method": "POST", "url": one of URLS, "body": {...}}`,
custom_ids unique in the file. The file is checked at upload (`purpose: batch`), so a bad file is refused
with the line to fix before any batch is made of it, and read again when a batch is created.

Bounded for any input: a line longer than the gateway's request body limit is refused before it is
parsed (it could never be sent), so is a line with more JSON objects and arrays than an API body may
have; at most `max_lines` requests. The reading gives the event loop back every few milliseconds, so a
200 MB file does not stall the requests being served meanwhile.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson

from vlgate.gateway.apis.caps import MAX_JSON_CONTAINERS
from vlgate.gateway.endpoint import bodyjson

URLS = ("/v1/chat/completions", "/v1/responses", "/v1/embeddings")
MAX_CUSTOM_ID = 512  # characters
YIELD_S = 0.005  # the loop is given back after this much reading
_KEYS = {"custom_id", "method", "url", "body"}


@dataclass(slots=True)
class InputLine:
    index: int  # the request's position among the file's requests (0-based; blank lines are not requests)
    number: int  # the line's number in the file (1-based), for messages
    custom_id: str
    url: str
    body: dict[str, Any]


class InputError(ValueError):
    """The file is not a batch input file; `line` is 1-based (None: the whole file)."""

    def __init__(self, message: str, line: int | None = None, code: str = "invalid_batch_input") -> None:
        super().__init__(f"Line {line}: {message}" if line is not None else message)
        self.line = line
        self.code = code


async def read_lines(raw: bytes, *, max_lines: int, max_line_bytes: int) -> AsyncIterator[InputLine]:
    """The file's requests in order; InputError at the first bad line."""
    if not raw.strip():
        raise InputError("The file is empty: a batch input file has one JSON request per line.", code="empty_file")
    seen: set[str] = set()
    start, number, index = 0, 0, 0
    paused = time.perf_counter()
    while start < len(raw):
        end = raw.find(b"\n", start)
        end = len(raw) if end < 0 else end
        number += 1
        chunk = raw[start:end]
        start = end + 1
        if time.perf_counter() - paused > YIELD_S:
            await asyncio.sleep(0)
            paused = time.perf_counter()
        if len(chunk) > max_line_bytes:
            raise InputError(f"the line is {len(chunk)} bytes; a request may be at most {max_line_bytes} bytes "
                             f"(the gateway's max_body_bytes).", number, "line_too_large")
        if not chunk.strip():
            continue
        if index >= max_lines:
            raise InputError(f"the file has more than {max_lines} requests (storage.batches.max_lines).", number,
                             "too_many_lines")
        line = _parse(chunk, number)
        custom_id = line["custom_id"]
        if custom_id in seen:
            raise InputError(f"custom_id {custom_id[:100]!r} is used by an earlier line; each request needs its own.",
                             number, "duplicate_custom_id")
        seen.add(custom_id)
        yield InputLine(index, number, custom_id, line["url"], line["body"])
        index += 1


async def check(raw: bytes, *, max_lines: int, max_line_bytes: int) -> int:
    """How many requests the file has; InputError when a line is bad."""
    n = 0
    async for _ in read_lines(raw, max_lines=max_lines, max_line_bytes=max_line_bytes):
        n += 1
    return n


def _parse(chunk: bytes, number: int) -> dict[str, Any]:
    try:
        chunk.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"the line is not valid UTF-8 (byte {exc.start + 1} of the line).", number,
                         "invalid_encoding") from None
    try:
        line = bodyjson.loads(chunk, MAX_JSON_CONTAINERS)
    except bodyjson.TooManyContainers:
        raise InputError(f"the line has more than {MAX_JSON_CONTAINERS} JSON objects and arrays.", number,
                         "line_too_large") from None
    except orjson.JSONDecodeError as exc:
        raise InputError(f"the line is not valid JSON: {exc}.", number, "invalid_json") from None
    if not isinstance(line, dict):
        raise InputError("the line must be a JSON object with custom_id, method, url and body.", number)
    extra = sorted(set(line) - _KEYS)
    if extra:
        raise InputError(f"unknown field {extra[0][:100]!r}; a line has only custom_id, method, url and body.",
                         number)
    custom_id = line.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id or len(custom_id) > MAX_CUSTOM_ID:
        raise InputError(f"custom_id must be a string of 1 to {MAX_CUSTOM_ID} characters.", number)
    if line.get("method") != "POST":
        raise InputError("method must be \"POST\".", number)
    url = line.get("url")
    if url not in URLS:
        shown = url[:100] if isinstance(url, str) else repr(url)[:100]
        raise InputError(f"url {shown!r} cannot be batched; use one of {', '.join(URLS)}.", number,
                         "unsupported_url")
    if not isinstance(line.get("body"), dict):
        raise InputError("body must be a JSON object (the request as it would be POSTed).", number)
    return line
