"""Affinity keys: requests that share a prompt prefix should meet the llama-server that has it cached.

A request's keys go from the most specific prefix to the least: its conversation (system prompt +
first user turn + images: every later turn starts with it), then each image with the system prompt
(a new conversation about an image another one already sent). The balancer sends the request to
the backend that last served the first key it knows (routing/holders.py, routing/plugins/scorers.py).
"""

from __future__ import annotations

from typing import Any

Affinity = tuple[object, ...]


def chat_affinity(messages: list[Any], image_hashes: list[str]) -> Affinity | None:
    """Keys of a chat-shaped request: the conversation, then system prompt + each image."""
    key: list[tuple[object, object]] = []
    for message in messages:
        if not isinstance(message, dict):
            return None
        content = message.get("content")
        if isinstance(content, list):
            content = tuple(p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text")
        key.append((message.get("role"), content))
        if message.get("role") == "user":
            break
    if not key:
        return None
    system = key[0] if key[0][0] in ("system", "developer") else None
    return (hash((tuple(key), tuple(image_hashes))), *(hash((system, h)) for h in dict.fromkeys(image_hashes)))


def prompt_affinity(prompt: object) -> Affinity | None:
    """A raw completion prompt: its first 256 characters stand for the prefix."""
    return (hash(prompt[:256]),) if isinstance(prompt, str) else None
