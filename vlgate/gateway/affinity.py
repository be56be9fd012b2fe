"""Affinity keys: requests that share a prompt prefix should meet the llama-server that has it cached."""

from __future__ import annotations

from typing import Any


def chat_affinity(messages: list[Any], image_hashes: list[str]) -> object | None:
    """Requests sharing system prompt + first user turn + images share llama-server's KV cache prefix."""
    key: list[object] = []
    for message in messages:
        if not isinstance(message, dict):
            return None
        content = message.get("content")
        if isinstance(content, list):
            content = tuple(p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text")
        key.append((message.get("role"), content))
        if message.get("role") == "user":
            break
    return hash((tuple(key), tuple(image_hashes))) if key else None


def prompt_affinity(prompt: object) -> object | None:
    """A raw completion prompt: its first 256 characters stand for the prefix."""
    return hash(prompt[:256]) if isinstance(prompt, str) else None
