"""Where presets meet the request path: post-process a non-stream answer, or tap a stream.

A stream is only tapped when a preset needs the model's text: events are passed on as they come,
one event behind, so that the last chunk before `data: [DONE]` can carry the `vlgate` field.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from vlgate.errors import APIError
from vlgate.gateway.apis.openai import completion
from vlgate.gateway.endpoint.context import RequestContext
from vlgate.gateway.endpoint.sse import EventSplitter
from vlgate.images.types import ImageInfo
from vlgate.presets import PresetRun
from vlgate.presets.apply import CHAT, Dialect

if TYPE_CHECKING:
    from vlgate.gateway.gateway import Gateway

_DONE = b"data: [DONE]"


class PresetStreamTap:
    def __init__(self, run: PresetRun, images: list[ImageInfo]) -> None:
        self.run = run
        self.images = images
        self._events = EventSplitter()
        self._held: bytes | None = None  # the latest complete event, not yet sent
        self._text: list[str] = []
        self._finish_reason: str | None = None

    def _observe(self, event: bytes) -> None:
        if not event.startswith(b"data: {"):
            return
        try:
            chunk = orjson.loads(event[6:])
        except orjson.JSONDecodeError:
            return
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if isinstance(delta.get("content"), str):
                self._text.append(delta["content"])
            if choice.get("finish_reason"):
                self._finish_reason = choice["finish_reason"]

    def _with_extension(self, event: bytes) -> bytes:
        ext = self.run.stream_extension("".join(self._text), self.images, self._finish_reason)
        try:
            chunk = orjson.loads(event[6:])
        except orjson.JSONDecodeError:
            return event
        if not isinstance(chunk, dict):
            return event
        chunk["vlgate"] = ext
        return b"data: " + orjson.dumps(chunk)

    def feed(self, data: bytes) -> bytes:
        out: list[bytes] = []
        for event in self._events.feed(data):
            if event.startswith(_DONE):
                if self._held is not None:
                    out.append(self._with_extension(self._held) + b"\n\n")
                    self._held = None
                out.append(event + b"\n\n")
                continue
            self._observe(event)
            if self._held is not None:
                out.append(self._held + b"\n\n")
            self._held = event
        return b"".join(out)

    def flush(self) -> bytes:
        """The stream ended without [DONE] (error event or cut): send what is held, unchanged."""
        rest = (self._held + b"\n\n" if self._held is not None else b"") + self._events.rest()
        self._held = None
        return rest


def resolve_preset(gw: Gateway, body: dict[str, Any], dialect: Dialect = CHAT) -> PresetRun | None:
    """The preset a request asks for (`body` rewritten in place, in the API's `dialect`); a 503 when the
    preset parses structure tokens that no backend's output keeps."""
    served = gw.config.gateway.model
    run = gw.presets.resolve(body, body.get("model") or served, served, dialect)
    if run is not None and run.parsers and (problem := gw.structure_tokens_problem()):
        raise APIError(503, f"Structured preset '{run.name}' is unavailable: {problem}",
                       code="preset_unavailable", headers={"Retry-After": "60"})
    return run


def attach_preset(ctx: RequestContext, run: PresetRun, images: list[ImageInfo], body: dict[str, Any]) -> None:
    if body.get("stream") is True:
        ctx.stream_tap = PresetStreamTap(run, images)
        return

    def finish(response: dict[str, Any]) -> dict[str, Any]:
        completion.fill_chat(response)
        return run.finish(response, images)

    ctx.finish = lambda data: completion.rewrite_object(data, finish)
