"""Rewrite llama-server's Responses stream into the events the openai SDK (strict) and its helpers accept.

b11434's events lack `sequence_number`, `output_index`, `content_index`, `logprobs`, `part.annotations`,
the full response object on lifecycle events, and `response.function_call_arguments.done`; an item can
finish without ever having been announced. The rewriter keeps the little state needed to number items
and parts, adds what is missing, and passes through anything it does not know (numbered). Error events
(`data: {"error": ...}`) and comments pass unchanged: the SDK raises on the former.

A stored response's final event (`response.completed` / `response.incomplete`) is kept in `final`; with
`hold_final` it and whatever follows wait in the tap until `flush`, which the endpoint calls once the
response is stored: a client that has the final event can retrieve or continue the response at once.
"""

from __future__ import annotations

from typing import Any

from vlgate.gateway.apis.responses.completion import Echo, complete_item, complete_response
from vlgate.gateway.endpoint import sse

_LIFECYCLE = ("response.created", "response.in_progress", "response.queued")


class ResponsesStreamRewriter:
    """A stream tap (see context.StreamTap): bytes of backend events in, bytes of OpenAI events out."""

    def __init__(self, echo: Echo, *, hold_final: bool = False) -> None:
        self.echo = echo
        self.hold_final = hold_final
        self.final: dict[str, Any] | None = None  # the finished response object, once its event passed
        self._held: list[bytes] = []
        self._split = sse.EventSplitter()
        self._seq = 0
        self._index: dict[str, int] = {}  # output item id -> output_index
        self._args: dict[str, str] = {}  # function_call item id -> arguments so far
        self._response: dict[str, Any] = {}  # id and model, from the first event that carries them

    def feed(self, chunk: bytes) -> bytes:
        out: list[bytes] = []
        for raw in self._split.feed(chunk):
            _, data = sse.parse(raw)
            if not isinstance(data, dict) or "type" not in data:  # comment, error event, unknown: as is
                (self._held if self._held else out).append(raw + b"\n\n")
                continue
            for kind, event in self._rewrite(data):
                is_final = self.final is not None and event.get("response") is self.final
                (self._held if self._held or (is_final and self.hold_final) else out).append(sse.event(kind, event))
        return b"".join(out)

    def flush(self) -> bytes:
        held, self._held = b"".join(self._held), []
        return held + self._split.rest()

    # -- one backend event -> the events the client gets ------------------------------------------
    def _rewrite(self, data: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        kind = data["type"]
        response = data.get("response")
        if isinstance(response, dict):
            self._response.setdefault("id", response.get("id", ""))
            if response.get("model"):
                self._response["model"] = response["model"]
        out: list[tuple[str, dict[str, Any]]] = []
        if kind in _LIFECYCLE and isinstance(response, dict):
            data["response"] = self.echo.skeleton({**self._response, **response}, response.get("status", "in_progress"))
        elif kind == "response.completed" and isinstance(response, dict):
            complete_response(response, self.echo)
            self.final = response
            if response["status"] == "incomplete":  # OpenAI ends a cut-off answer with response.incomplete
                kind = data["type"] = "response.incomplete"
            if "vlgate" in response:  # a preset's parsed result: on the event too, as on chat's last chunk
                data["vlgate"] = response["vlgate"]
        elif kind == "response.output_item.added":
            item = data.get("item") or {}
            data["output_index"] = self._add(item)
            if item.get("type") == "function_call":
                self._args.setdefault(item.get("id", ""), "")
        elif kind == "response.output_item.done":
            item = data.get("item") or {}
            item_id = item.get("id", "")
            if item_id not in self._index:  # finished without being announced: announce it first
                out.append(self._numbered("response.output_item.added", {
                    "type": "response.output_item.added", "output_index": self._add(item),
                    "item": _announced(item)}))
            data["output_index"] = self._index[item_id]
            complete_item(item)
            out.extend(self._closing_events(item))
        elif kind.startswith(("response.content_part.", "response.output_text.", "response.reasoning_text.",
                              "response.function_call_arguments.")):
            data["output_index"] = self._index.get(data.get("item_id", ""), 0)
            if not kind.startswith("response.function_call_arguments."):
                data.setdefault("content_index", 0)
            if kind.startswith("response.output_text."):
                data.setdefault("logprobs", [])
            part = data.get("part")
            if isinstance(part, dict) and part.get("type") == "output_text":
                part.setdefault("annotations", [])
                part.setdefault("logprobs", [])
            if kind == "response.function_call_arguments.delta":
                item_id = data.get("item_id", "")
                self._args[item_id] = self._args.get(item_id, "") + str(data.get("delta", ""))
        out.append(self._numbered(kind, data))
        return out

    def _add(self, item: dict[str, Any]) -> int:
        return self._index.setdefault(item.get("id", ""), len(self._index))

    def _closing_events(self, item: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        """What b11434 leaves out before an item's `output_item.done`."""
        item_id = item.get("id", "")
        index = self._index[item_id]
        if item.get("type") == "function_call":
            return [self._numbered("response.function_call_arguments.done", {
                "type": "response.function_call_arguments.done", "item_id": item_id, "output_index": index,
                "name": item.get("name"), "arguments": item.get("arguments", self._args.get(item_id, ""))})]
        if item.get("type") == "reasoning":
            text = "".join(p.get("text", "") for p in item.get("content") or () if isinstance(p, dict))
            return [self._numbered("response.reasoning_text.done", {
                "type": "response.reasoning_text.done", "item_id": item_id, "output_index": index,
                "content_index": 0, "text": text})]
        return []

    def _numbered(self, kind: str, data: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        data["sequence_number"] = self._seq
        self._seq += 1
        return kind, data


def _announced(item: dict[str, Any]) -> dict[str, Any]:
    """The `output_item.added` form of a finished item: in progress, nothing generated yet."""
    added = {**item, "status": "in_progress"}
    if item.get("type") == "message":
        added["content"] = []
    elif item.get("type") == "function_call":
        added["arguments"] = ""
    elif item.get("type") == "reasoning":
        added["content"] = []
    return added
