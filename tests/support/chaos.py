"""How a request under chaos ended, judged the way a client would: complete, refused properly, or lost."""

from __future__ import annotations

import json
from typing import Any

import httpx


async def post_chat(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> tuple[httpx.Response | None, str]:
    """The answer and its whole body (None and the exception's name when the request itself failed)."""
    try:
        async with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
            return r, (await r.aread()).decode(errors="replace")
    except httpx.HTTPError as exc:
        return None, f"{type(exc).__name__}: {exc}"


def stream_outcome(raw: str) -> str:
    """"ok" (ends with [DONE]), "error event" (the SDK raises: the client knows) or "truncated" (a silent cut)."""
    events = [ln[6:] for ln in raw.split("\n") if ln.startswith("data: ")]
    if events and events[-1] == "[DONE]":
        return "ok"
    if events and isinstance(json.loads(events[-1]), dict) and json.loads(events[-1]).get("error"):
        return "error event"
    return "truncated"


def proper_error(r: httpx.Response, raw: str) -> bool:
    """An error in OpenAI's complete shape, final (`x-should-retry: false`), 429/503 with Retry-After."""
    try:
        err = json.loads(raw).get("error", {})
    except ValueError:
        return False
    complete = set(err) >= {"message", "type", "param", "code"}
    final = r.headers.get("x-should-retry") == "false"
    retry_after = r.status_code not in (429, 503) or "retry-after" in r.headers
    return complete and final and retry_after and "Internal gateway error" not in raw
