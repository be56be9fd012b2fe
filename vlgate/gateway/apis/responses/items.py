"""Items as the store keeps them and the API lists them, and back into a request's `input`.

An input item arrives in any of the Responses API's shapes (an easy message with string content, a typed
message, a function call or its output, a reasoning item); it is kept as the resource OpenAI lists
(`ResponseItemList`, `ConversationItemList`): typed, with an id and a status, message content as typed
parts, images with their `detail`. Each stored item gets a fresh id: the same item sent twice (an agent
resending its history) is two items, and ids never collide across owners.
"""

from __future__ import annotations

import secrets
from typing import Any

from vlgate.errors import APIError

_PREFIX = {"message": "msg", "function_call": "fc", "function_call_output": "fco", "reasoning": "rs"}
_SHOWN_ONLY = ("id", "status")  # what a stored item has that a request's input item need not carry
MAX_METADATA_KEYS = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512


def new_id(prefix: str) -> str:
    """An id as OpenAI shapes them (`resp_…`, `msg_…`, `conv_…`): 192 random bits."""
    return f"{prefix}_{secrets.token_hex(24)}"


def item_kind(item: Any) -> str:
    """An input item's kind (an easy input message has a `role` and no `type`)."""
    if isinstance(item, dict):
        kind = item.get("type")
        if kind in (None, "message") and "role" in item:
            return "message"
        if isinstance(kind, str):
            return kind
    return "unknown"


def as_stored(item: dict[str, Any]) -> dict[str, Any]:
    """A validated input item as it is stored and listed (a new dict; the request's item is untouched)."""
    kind = item_kind(item)
    out = {**item, "type": kind, "id": new_id(_PREFIX.get(kind, "item")), "status": "completed"}
    if kind == "message":
        role, content = item.get("role"), item.get("content")
        text_type = "output_text" if role == "assistant" else "input_text"
        parts = [{"type": text_type, "text": content}] if isinstance(content, str) else content or []
        out["content"] = [_stored_part(p, text_type) for p in parts]
    return out


def _stored_part(part: Any, text_type: str) -> Any:
    if not isinstance(part, dict):
        return part
    if part.get("type") == "input_image" and part.get("detail") is None:
        return {**part, "detail": "auto"}
    if part.get("type") == "input_text" and text_type == "output_text":  # an assistant's text is output text
        part = {**part, "type": "output_text"}
    if part.get("type") == "output_text":  # both lists are required of an output text
        return {**part, "annotations": _list(part.get("annotations")), "logprobs": _list(part.get("logprobs"))}
    return part


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def as_output_item(item: dict[str, Any]) -> dict[str, Any]:
    """A response's output item as a conversation keeps it (it has its id and status already)."""
    if isinstance(item.get("id"), str) and item["id"]:
        return item
    return {**item, "id": new_id(_PREFIX.get(item_kind(item), "item"))}


def as_input(item: dict[str, Any]) -> dict[str, Any] | None:
    """A stored item back as a request's input item (None: nothing the model can read, e.g. an empty
    reasoning item, which llama-server refuses)."""
    if item.get("type") == "reasoning" and not item.get("content"):
        return None
    return {k: v for k, v in item.items() if k not in _SHOWN_ONLY}


def check_metadata(value: Any, param: str = "metadata") -> dict[str, str]:
    """OpenAI's metadata rules: at most 16 pairs, keys up to 64 characters, values strings up to 512."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise APIError(400, f"Invalid type for '{param}': expected an object of string values.", param=param,
                       code="invalid_type")
    if len(value) > MAX_METADATA_KEYS:
        raise APIError(400, f"Invalid '{param}': at most {MAX_METADATA_KEYS} key-value pairs (got {len(value)}).",
                       param=param, code="invalid_value")
    for key, text in value.items():
        if len(key) > MAX_METADATA_KEY:
            raise APIError(400, f"Invalid '{param}': key '{key[:80]}' is longer than {MAX_METADATA_KEY} "
                           "characters.", param=param, code="invalid_value")
        if not isinstance(text, str):
            raise APIError(400, f"Invalid type for '{param}.{key[:80]}': expected a string.",
                           param=f"{param}.{key[:80]}", code="invalid_type")
        if len(text) > MAX_METADATA_VALUE:
            raise APIError(400, f"Invalid '{param}.{key[:80]}': longer than {MAX_METADATA_VALUE} characters.",
                           param=f"{param}.{key[:80]}", code="invalid_value")
    return value
