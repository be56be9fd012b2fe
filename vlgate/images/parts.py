"""Find the image parts of a chat-completions body, and write the normalized URLs back in place."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vlgate.images.types import ImageError


@dataclass(slots=True)
class ImagePart:
    param: str  # e.g. "messages[1].content[0].image_url", for the 400
    part: dict[str, Any]  # the content part; its "image_url" is rewritten
    url: str

    def write(self, data_url: str) -> None:
        value = self.part.get("image_url")
        if isinstance(value, dict):
            value["url"] = data_url
        else:  # the string shorthand becomes the object llama-server expects
            self.part["image_url"] = {"url": data_url}


def find_images(body: Any) -> list[ImagePart]:
    """Every `{"type": "image_url"}` part in message order; other shapes are left to the request parser."""
    messages = body.get("messages") if isinstance(body, dict) else None
    if not isinstance(messages, list):
        return []
    found: list[ImagePart] = []
    for i, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            continue
        for j, part in enumerate(content):
            if isinstance(part, dict) and part.get("type") == "image_url":
                param = f"messages[{i}].content[{j}].image_url"
                found.append(ImagePart(param, part, _url_of(part, param)))
    return found


def _url_of(part: dict[str, Any], param: str) -> str:
    value = part.get("image_url")
    if isinstance(value, dict):
        value = value.get("url")
    if not isinstance(value, str) or not value.strip():
        raise ImageError("image_url must be an object with a non-empty 'url' string", param=param)
    return value.strip()
