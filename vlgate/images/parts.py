"""Find the image parts of a request body in every API shape, and write the normalized image back in place.

Shapes (each exactly where llama-server b11434 looks for images, so none slips past the gateway):
- chat completions: `messages[].content[]` `{"type": "image_url", "image_url": {"url"} | "<url>"}`;
- Responses: `input[].content[]` and `input[].output[]` (function_call_output) `{"type": "input_image",
  "image_url": "<url>"}` (a `file_id` image cannot be served: 400);
- Anthropic Messages: `messages[].content[]` and `tool_result.content[]` `{"type": "image", "source":
  {"type": "base64", "media_type", "data"} | {"type": "url", "url"}}`.
Every shape is rewritten to its own form of a data: URL the gateway produced.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from vlgate.images.types import ImageError


@dataclass(slots=True)
class ImagePart:
    param: str  # e.g. "messages[1].content[0].image_url", for the 400
    part: dict[str, Any]  # the content part, rewritten in place by `write`
    url: str  # a data: URL or an http(s) URL, whatever the shape carried
    shape: str = "image_url"  # the part's type: image_url | input_image | image

    def write(self, data_url: str) -> None:
        if self.shape == "input_image":
            self.part["image_url"] = data_url
        elif self.shape == "image":
            header, _, data = data_url.partition(",")
            media_type = header[5:].split(";", 1)[0]
            self.part["source"] = {"type": "base64", "media_type": media_type, "data": data}
        elif isinstance(value := self.part.get("image_url"), dict):
            value["url"] = data_url
        else:  # the string shorthand becomes the object llama-server expects
            self.part["image_url"] = {"url": data_url}


def find_images(body: Any) -> list[ImagePart]:
    """Every image part of a chat, Responses or Anthropic body, in message order."""
    if not isinstance(body, dict):
        return []
    found: list[ImagePart] = []
    for key in ("messages", "input"):
        items = body.get(key)
        if not isinstance(items, list):
            continue
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                continue
            for field in ("content", "output"):  # output: a Responses function_call_output
                parts = item.get(field)
                if isinstance(parts, list):  # a string holds no image: no place name built, no generator
                    found.extend(_in_parts(parts, f"{key}[{i}].{field}"))
    return found


def _in_parts(parts: Any, where: str) -> Iterator[ImagePart]:
    if not isinstance(parts, list):
        return
    for j, part in enumerate(parts):
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        param = f"{where}[{j}]"
        if kind == "image_url":
            yield ImagePart(param + ".image_url", part, _chat_url(part, param + ".image_url"))
        elif kind == "input_image":
            yield ImagePart(param + ".image_url", part, _responses_url(part, param), "input_image")
        elif kind == "image":
            yield ImagePart(param + ".source", part, _anthropic_url(part, param + ".source"), "image")
        elif kind == "tool_result":  # Anthropic: images inside a tool's result
            yield from _in_parts(part.get("content"), param + ".content")


def _chat_url(part: dict[str, Any], param: str) -> str:
    value = part.get("image_url")
    if isinstance(value, dict):
        value = value.get("url")
    if not isinstance(value, str) or not value.strip():
        raise ImageError("image_url must be an object with a non-empty 'url' string", param=param)
    return value.strip()


def _responses_url(part: dict[str, Any], param: str) -> str:
    value = part.get("image_url")
    if value is None and part.get("file_id") is not None:
        raise ImageError("input_image by file_id is not supported here (there is no Files API): send the image "
                         "as image_url (a data: URL or an https:// URL)", param=param + ".file_id",
                         code="unsupported_image_source")
    if not isinstance(value, str) or not value.strip():
        raise ImageError("input_image needs 'image_url': a non-empty string", param=param + ".image_url")
    return value.strip()


def _anthropic_url(part: dict[str, Any], param: str) -> str:
    source = part.get("source")
    kind = source.get("type") if isinstance(source, dict) else None
    if kind == "base64" and isinstance(source, dict) and isinstance(source.get("data"), str):
        # the claimed media_type is not trusted: the bytes decide (the normalizer sniffs them)
        return "data:application/octet-stream;base64," + source["data"].strip()
    if kind == "url" and isinstance(source, dict) and isinstance(source.get("url"), str) and source["url"].strip():
        return source["url"].strip()
    raise ImageError("an image block needs 'source' of type 'base64' (with 'data') or 'url' (with 'url'); "
                     f"source type {kind!r} is not supported here", param=param, code="unsupported_image_source")
