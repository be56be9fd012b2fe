"""Server-side state of `POST /v1/responses`: `store`, `previous_response_id`, `conversation`.

Before the request goes to a backend, its history (a chain of stored responses, or a conversation's items)
is put in front of its input. After the answer, the response and its new input items are stored (input
as the model saw it: presets applied and images normalized, so an image is never fetched twice), and a
conversation gets the new input and output items. The response is stored before the client has the end
of the answer (`RequestContext.persist`): whoever has the id can retrieve and continue it at once, here or
on another replica. With `store: false` (and no conversation), or storage off, nothing here touches the
store.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from vlgate.errors import APIError
from vlgate.gateway.apis.responses.chain import load_chain, load_conversation
from vlgate.gateway.apis.responses.completion import Echo
from vlgate.gateway.apis.responses.items import as_output_item, as_stored, new_id
from vlgate.gateway.apis.responses.records import expires
from vlgate.gateway.apis.responses.stream import ResponsesStreamRewriter
from vlgate.gateway.endpoint.local import store_errors
from vlgate.gateway.gateway import Gateway
from vlgate.store.base import CONVERSATION, CONVERSATION_ITEM, RESPONSE, RESPONSE_INPUT, Record, Store, StoreError

log = logging.getLogger("vlgate.gateway.responses")

KEPT = ("completed", "incomplete")  # a conversation keeps the items of responses that ended so


@dataclass(slots=True)
class State:
    """One stateful request: where its answer goes once complete."""

    store: Store
    owner: str  # the API key's name ("" without keys)
    id: str  # the response's id, made by the gateway
    keep: bool  # store the response (`store` not false)
    conversation: str | None
    keep_s: float  # retention of responses (0: until deleted)
    conversation_keep_s: float
    history: list[dict[str, Any]]  # the items put in front of the input (to tell the new ones apart)
    background: bool = False  # run in-process and answered at once (background.py)
    items: list[dict[str, Any]] = field(default_factory=list)  # the new input items, as stored
    final: dict[str, Any] | None = None  # the finished response object (non-stream)
    tap: ResponsesStreamRewriter | None = None  # a stream's rewriter (it holds the final object)

    def new_input(self, body: dict[str, Any]) -> list[Any]:
        """The request's own input items (a preset's system message included), without the history."""
        old = {id(item) for item in self.history}
        return [item for item in body["input"] if id(item) not in old]

    def take_input(self, body: dict[str, Any]) -> None:
        """The new input items, as stored: after presets and images (the model's view of them)."""
        self.items = [as_stored(item) for item in self.new_input(body) if isinstance(item, dict)]

    def finish(self, response: dict[str, Any]) -> dict[str, Any]:
        self.final = response
        return response

    def response_records(self, response: dict[str, Any], now: float) -> list[Record]:
        until = expires(now, self.keep_s)
        created = int(response.get("created_at") or now)
        return [Record(RESPONSE, self.id, self.owner, response, created, expires_at=until),
                *(Record(RESPONSE_INPUT, item["id"], self.owner, item, created, self.id, until) for item in self.items)]

    async def conversation_records(self, response: dict[str, Any], now: float) -> list[Record]:
        """The new input and output items, for a conversation that still exists."""
        if (self.conversation is None or response.get("status") not in KEPT
                or await self.store.get(CONVERSATION, self.conversation, self.owner) is None):
            return []
        until = expires(now, self.conversation_keep_s)
        outputs = [as_output_item(item) for item in response.get("output") or () if isinstance(item, dict)]
        return [Record(CONVERSATION_ITEM, item["id"], self.owner, item, int(now), self.conversation, until)
                for item in (*self.items, *outputs)]

    async def persist(self) -> None:
        """Store the finished response (the endpoint awaits this before the client has the answer's end)."""
        response = self.final if self.tap is None else self.tap.final
        if response is None:  # not a response object (an error event ended the stream)
            return
        try:  # shielded: a client leaving now does not leave a response stored without its conversation items
            await asyncio.shield(self._write(response))
        except StoreError as exc:  # the answer still goes out; a later retrieve says 404
            log.error("response %s was answered but not stored: %s", self.id, exc)

    async def _write(self, response: dict[str, Any]) -> None:
        now = time.time()
        records = self.response_records(response, now) if self.keep else []
        records += await self.conversation_records(response, now)
        if records:
            await self.store.add(records)


async def load_state(gw: Gateway, owner: str | None, body: dict[str, Any], echo: Echo) -> State | None:
    """Check the state fields, put the history in front of `body["input"]`; None when nothing is stored or
    loaded (then the request costs the store nothing)."""
    previous = body.get("previous_response_id")
    conversation = body.get("conversation")
    background = body.get("background") is True
    if previous and conversation:
        raise APIError(400, "Mutually exclusive parameters: provide either 'previous_response_id' or "
                       "'conversation', not both.", param="conversation", code="mutually_exclusive_parameters")
    store = gw.store
    if store is None:
        for name in ("previous_response_id", "conversation", "background"):
            if body.get(name):
                raise APIError(400, f"'{name}' needs stored responses, and this gateway stores nothing (storage "
                               "is disabled): send the whole conversation in 'input'.", param=name,
                               code="storage_disabled")
        echo.fields["store"] = False
        return None
    keep = body.get("store") is not False
    if background and not keep:
        raise APIError(400, "Background mode requires 'store' to be true.", param="background", code="invalid_value")
    if background and body.get("stream") is True:
        raise APIError(400, "'background' with 'stream' is not supported here: create the response in the "
                       "background and poll GET /v1/responses/{id}.", param="stream", code="unsupported_parameter")
    echo.fields["store"] = keep
    if not (keep or previous or conversation):
        return None
    conversation_id = conversation.get("id") if isinstance(conversation, dict) else conversation
    with store_errors():
        if previous:
            history = await load_chain(store, owner or "", previous)
        elif conversation_id:
            history = await load_conversation(store, owner or "", conversation_id)
        else:
            history = []
    given = body["input"]  # a string is the user message it stands for (stored as that item)
    body["input"] = [*history, *([{"role": "user", "content": given}] if isinstance(given, str) else given)]
    if conversation_id:
        echo.fields["conversation"] = {"id": conversation_id}
    for name in ("previous_response_id", "conversation", "background"):  # the gateway's, not the backend's
        body.pop(name, None)
    echo.id = new_id("resp")
    retention = gw.config.storage.retention
    return State(store, owner or "", echo.id, keep, conversation_id, retention.responses_s, retention.conversations_s,
                 history, background)
