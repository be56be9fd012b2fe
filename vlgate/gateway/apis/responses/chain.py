"""What a stateful request carries in front of its input: a chain of stored responses, or a conversation.

`previous_response_id`: each stored response keeps only its own input items and its output, and names its
own previous response, so the history is walked back from the newest: per response, its input, then its
output. `instructions` are not carried over (OpenAI's rule: they are not input items). The walk is bounded
(depth and items): a stranger's request costs a known number of reads. A response deleted or expired
mid-chain ends the walk there (the history starts after it); the one named in the request must exist.

`conversation`: the conversation's items, oldest first, up to the same bound.
"""

from __future__ import annotations

from typing import Any

from vlgate.errors import APIError
from vlgate.gateway.apis.caps import MAX_INPUT_ITEMS
from vlgate.gateway.apis.responses.items import as_input
from vlgate.gateway.apis.responses.records import RUNNING, previous_not_found, settle
from vlgate.gateway.endpoint.local import not_found
from vlgate.store.base import CONVERSATION, CONVERSATION_ITEM, RESPONSE, RESPONSE_INPUT, Store

MAX_DEPTH = 100  # responses walked back from `previous_response_id`
MAX_ITEMS = MAX_INPUT_ITEMS  # items a history may hold (what one request's `input` may hold)


def _too_long(what: str) -> APIError:
    return APIError(400, f"The {what} is longer than this gateway continues ({MAX_DEPTH} responses, {MAX_ITEMS} "
                    "items): start a new one with the input you need.", param="input", code="context_too_long")


async def load_chain(store: Store, owner: str, response_id: str) -> list[dict[str, Any]]:
    """The input items of the stored chain ending at `response_id`, oldest first."""
    segments: list[list[dict[str, Any]]] = []
    total = 0
    current: Any = response_id
    for depth in range(MAX_DEPTH + 1):
        if depth == MAX_DEPTH:
            raise _too_long("chain of previous responses")
        record = await store.get(RESPONSE, current, owner)
        if record is None:
            if depth == 0:
                raise previous_not_found(response_id)
            break  # deleted or expired: the history starts after it
        record = await settle(store, record)
        if depth == 0 and record.data.get("status") in RUNNING:
            raise APIError(400, f"Previous response with id '{response_id}' is still {record.data['status']}; "
                           "continue it once it has finished.", param="previous_response_id",
                           code="previous_response_in_progress")
        inputs, more = await store.list_page(RESPONSE_INPUT, owner, parent=current, limit=MAX_ITEMS, order="asc")
        segment = [r.data for r in inputs] + [item for item in record.data.get("output") or ()
                                              if isinstance(item, dict)]
        total += len(segment)
        if more or total > MAX_ITEMS:
            raise _too_long("chain of previous responses")
        segments.append(segment)
        current = record.data.get("previous_response_id")
        if not isinstance(current, str) or not current:
            break
    return _inputs(item for segment in reversed(segments) for item in segment)


async def load_conversation(store: Store, owner: str, conversation_id: str) -> list[dict[str, Any]]:
    """The conversation's items as input items, oldest first."""
    if await store.get(CONVERSATION, conversation_id, owner) is None:
        raise not_found("conversation", conversation_id, param="conversation")
    records, more = await store.list_page(CONVERSATION_ITEM, owner, parent=conversation_id, limit=MAX_ITEMS,
                                          order="asc")
    if more:
        raise _too_long("conversation")
    return _inputs(r.data for r in records)


def _inputs(items: Any) -> list[dict[str, Any]]:
    return [item for item in map(as_input, items) if item is not None]
