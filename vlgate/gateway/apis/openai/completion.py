"""Make llama-server's non-stream answers look exactly like OpenAI's.

OpenAI always sends `choices[].logprobs` (null when not asked) and `message.refusal` (null);
llama-server omits them, and strict clients validating against the official spec reject that.
Answers that already carry both pass through as the same bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson


def complete_chat(data: bytes) -> bytes:
    if b'"logprobs"' in data and b'"refusal"' in data and b'"logprobs":{' not in data:
        return data
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError:
        return data
    if not fill_chat(body):
        return data
    return orjson.dumps(body)


def fill_chat(body: Any) -> bool:
    """Add the missing null fields in place; True when something changed."""
    if not isinstance(body, dict) or not isinstance(body.get("choices"), list):
        return False
    changed = False
    for choice in body["choices"]:
        if not isinstance(choice, dict):
            continue
        if "logprobs" not in choice:
            choice["logprobs"] = None
            changed = True
        elif isinstance(choice["logprobs"], dict) and "refusal" not in choice["logprobs"]:
            choice["logprobs"]["refusal"] = None
            changed = True
        message = choice.get("message")
        if isinstance(message, dict) and "refusal" not in message:
            message["refusal"] = None
            changed = True
    return changed


def rewrite_object(data: bytes, fn: Callable[[dict[str, Any]], dict[str, Any]]) -> bytes:
    """`fn` applied to a JSON object body, re-serialized; anything else passes unchanged."""
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError:
        return data
    return orjson.dumps(fn(body)) if isinstance(body, dict) else data


def complete_text(data: bytes) -> bytes:
    """/v1/completions: `choices[].logprobs` is required (nullable) there too."""
    if b'"logprobs"' in data:
        return data
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError:
        return data
    if not isinstance(body, dict) or not isinstance(body.get("choices"), list):
        return data
    for choice in body["choices"]:
        if isinstance(choice, dict):
            choice.setdefault("logprobs", None)
    return orjson.dumps(body)
