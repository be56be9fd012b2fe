"""The Conversations API and `conversation` on POST /v1/responses, through the gateway to a real llama-server,
with the strict openai SDK: create (metadata, initial items), retrieve, update, delete (items go too), items
(create up to 20, list with order and paging, retrieve, delete), responses that read and extend a
conversation, and two keys that cannot see each other's conversations."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from support import statefulgw
from support.postgres import postgres_server  # noqa: F401  (fixture)
from support.statefulgw import KEY_B, StatefulStack, spec_errors, stateful_stack, store_url

pytestmark = pytest.mark.slow
M = "youtu-vl"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def st(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, llama_server_bin,
       tiny_model) -> Iterator[StatefulStack]:
    """The same tests on the embedded store and on a real PostgreSQL server."""
    tmp = tmp_path_factory.mktemp("conversations")
    with store_url(request) as url, stateful_stack(tmp, llama_server_bin, tiny_model, storage_url=url) as stack:
        yield stack


def png(size: tuple[int, int] = (900, 600)) -> str:
    return statefulgw.png(size, (20, 30, 200))


error_of = statefulgw.sdk_error


def test_conversation_lifecycle(st: StatefulStack) -> None:
    c = st.client()
    conv = c.conversations.create(metadata={"topic": "demo"}, items=[
        {"role": "system", "content": "You are terse."}, {"type": "message", "role": "user", "content": "hello"}])
    assert conv.id.startswith("conv_") and conv.object == "conversation" and conv.metadata == {"topic": "demo"}
    assert c.conversations.retrieve(conv.id).model_dump() == conv.model_dump()
    updated = c.conversations.update(conv.id, metadata={"topic": "other", "n": "2"})
    assert updated.metadata == {"topic": "other", "n": "2"} and updated.created_at == conv.created_at
    assert c.conversations.retrieve(conv.id).metadata == {"topic": "other", "n": "2"}
    listed = c.conversations.items.list(conv.id, order="asc")
    assert [(i.type, getattr(i, "role", None)) for i in listed.data] == [("message", "system"), ("message", "user")]
    assert not listed.has_more
    added = c.conversations.items.create(conv.id, items=[{"role": "user", "content": f"n{i}"} for i in range(20)])
    assert len(added.data) == 20 and added.first_id == added.data[0].id and added.last_id == added.data[-1].id
    # order honoured, paged with after/limit/has_more
    newest = c.conversations.items.list(conv.id, limit=3)
    assert [i.id for i in newest.data] == [i.id for i in reversed(added.data[-3:])] and newest.has_more
    everything = [i.id for i in c.conversations.items.list(conv.id, order="asc", limit=5)]  # the SDK pages on
    assert everything == [i.id for i in listed.data] + [i.id for i in added.data]
    one = c.conversations.items.retrieve(added.data[0].id, conversation_id=conv.id)
    assert one.type == "message" and one.content[0].type == "input_text" and one.content[0].text == "n0"
    assert c.conversations.items.delete(added.data[0].id, conversation_id=conv.id).id == conv.id
    assert error_of(lambda: c.conversations.items.retrieve(added.data[0].id, conversation_id=conv.id))[0] == 404
    deleted = c.conversations.delete(conv.id)
    assert deleted.id == conv.id and deleted.deleted and deleted.object == "conversation.deleted"
    assert st.rows("SELECT COUNT(*) FROM records WHERE id = ? OR parent = ?", conv.id, conv.id)[0][0] == 0
    for call in (lambda: c.conversations.retrieve(conv.id), lambda: c.conversations.items.list(conv.id),
                 lambda: c.conversations.delete(conv.id)):
        assert error_of(call)[0] == 404


def test_bad_conversation_requests(st: StatefulStack) -> None:
    c = st.client()
    conv = c.conversations.create()
    assert conv.metadata == {}
    cases: dict[str, Any] = {
        "items": lambda: c.conversations.items.create(conv.id, items=[{"role": "user", "content": "x"}] * 21),
        "items[0]": lambda: c.conversations.create(items=[{"type": "web_search_call", "id": "ws_1"}]),
        "metadata": lambda: c.conversations.create(metadata={f"k{i}": "v" for i in range(17)}),
        "metadata.k": lambda: c.conversations.update(conv.id, metadata={"k": "v" * 513}),
    }
    for param, call in cases.items():
        status, body = error_of(call)
        assert status == 400 and body["param"] == param, body
    status, body = error_of(lambda: c.conversations.items.create(conv.id, items=[]))
    assert status == 400 and body["param"] == "items"
    status, body = error_of(lambda: c.conversations.items.create(conv.id, items=[
        {"role": "user", "content": [{"type": "input_image", "image_url": "data:image/png;base64,AAAA"}]}]))
    assert status == 400 and body["param"].startswith("items[0].content[0]")
    reply = st.http("POST", f"/v1/conversations/{conv.id}", json={})  # an update names its metadata
    assert reply.status_code == 400 and reply.json()["error"]["param"] == "metadata"
    assert c.conversations.items.list(conv.id).data == []  # nothing half-added


def test_images_are_normalized_when_added(st: StatefulStack) -> None:
    c = st.client()
    image = png()
    conv = c.conversations.create(items=[{"role": "user", "content": [
        {"type": "input_image", "image_url": image}, {"type": "input_text", "text": "what is this?"}]}])
    kept = c.conversations.items.list(conv.id).data[0]
    assert kept.type == "message" and kept.content[0].type == "input_image"
    url = kept.content[0].image_url
    assert url is not None and url.startswith("data:image/") and url != image and kept.content[0].detail == "auto"


def test_responses_read_and_extend_a_conversation(st: StatefulStack) -> None:
    c = st.client()
    image = png((320, 240))
    first = [{"role": "user", "content": [{"type": "input_image", "image_url": image},
                                          {"type": "input_text", "text": "look"}]}]
    conv = c.conversations.create(items=first)
    r1 = c.responses.create(model=M, input="what now?", conversation=conv.id, max_output_tokens=4,
                            instructions="Never carried over.")
    assert r1.conversation is not None and r1.conversation.id == conv.id
    items = c.conversations.items.list(conv.id, order="asc").data
    assert [getattr(i, "role", None) for i in items] == ["user", "user", "assistant"]
    assert items[2].id == r1.output[0].id  # the output item itself, with its id
    assert [i.id for i in c.responses.input_items.list(r1.id)] == [items[1].id]  # its own input, same id
    r2 = c.responses.create(model=M, input=[{"role": "user", "content": "and?"}], conversation={"id": conv.id},
                            max_output_tokens=4, temperature=0)
    explicit = [*first, {"role": "user", "content": "what now?"},
                {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": r1.output_text}]},
                {"role": "user", "content": "and?"}]
    same = c.responses.create(model=M, input=explicit, max_output_tokens=4, store=False, temperature=0)
    assert r2.usage is not None and same.usage is not None and r2.usage.input_tokens == same.usage.input_tokens
    assert r2.output_text == same.output_text
    assert len(c.conversations.items.list(conv.id).data) == 5
    # a response not stored still extends its conversation (OpenAI's rule: the conversation keeps the turn)
    r3 = c.responses.create(model=M, input="third", conversation=conv.id, max_output_tokens=2, store=False)
    assert len(c.conversations.items.list(conv.id).data) == 7
    assert error_of(lambda: c.responses.retrieve(r3.id))[0] == 404
    # streamed: the items are there when the final event arrives
    with c.responses.stream(model=M, input="streamed", conversation=conv.id, max_output_tokens=3) as stream:
        for event in stream:
            if event.type in ("response.completed", "response.incomplete"):
                assert len(c.conversations.items.list(conv.id).data) == 9
    status, body = error_of(lambda: c.responses.create(model=M, input="x", conversation="conv_nope"))
    assert status == 404 and body["param"] == "conversation"


def test_another_keys_conversation_is_an_unknown_id(st: StatefulStack) -> None:
    a, b = st.client(), st.client(KEY_B)
    conv = a.conversations.create(metadata={"owner": "a"}, items=[{"role": "user", "content": "secret"}])
    item = a.conversations.items.list(conv.id).data[0]
    other = b.conversations.create()
    calls = {
        "retrieve": lambda i: b.conversations.retrieve(i),
        "update": lambda i: b.conversations.update(i, metadata={"x": "y"}),
        "delete": lambda i: b.conversations.delete(i),
        "items.list": lambda i: b.conversations.items.list(i),
        "items.create": lambda i: b.conversations.items.create(i, items=[{"role": "user", "content": "x"}]),
        "items.retrieve": lambda i: b.conversations.items.retrieve(item.id, conversation_id=i),
        "items.delete": lambda i: b.conversations.items.delete(item.id, conversation_id=i),
        "responses.create": lambda i: b.responses.create(model=M, input="x", conversation=i, max_output_tokens=2),
    }
    for name, call in calls.items():
        theirs, unknown = error_of(lambda: call(conv.id)), error_of(lambda: call("conv_0123"))  # noqa: B023
        assert theirs[0] == unknown[0] == 404, name
        assert theirs[1]["message"].replace(conv.id, "ID") == unknown[1]["message"].replace("conv_0123", "ID"), name
    # an item is found only in its own conversation, even by its owner
    mine = a.conversations.create()
    assert error_of(lambda: a.conversations.items.retrieve(item.id, conversation_id=mine.id))[0] == 404
    assert error_of(lambda: b.conversations.items.retrieve(item.id, conversation_id=other.id))[0] == 404
    assert a.conversations.retrieve(conv.id).metadata == {"owner": "a"}
    assert [i.id for i in a.conversations.items.list(conv.id).data] == [item.id]


def test_objects_conform_to_the_spec(st: StatefulStack) -> None:
    """The raw JSON, checked against the official spec's schemas (the SDK's strict models above too)."""
    made = st.http("POST", "/v1/conversations", json={"metadata": {"k": "v"}, "items": [
        {"role": "user", "content": [{"type": "input_image", "image_url": png((64, 64))},
                                     {"type": "input_text", "text": "hi"}]},
        {"type": "message", "role": "assistant", "content": "earlier answer"}]})
    assert made.status_code == 200, made.text
    conv = made.json()
    tools = [{"type": "function", "name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
    r = st.http("POST", "/v1/responses", json={"model": M, "input": "Weather?", "tools": tools,
                                               "max_output_tokens": 60, "conversation": conv["id"]}).json()
    call = r["output"][0]
    assert call["type"] == "function_call"
    st.http("POST", "/v1/responses", json={"model": M, "tools": tools, "max_output_tokens": 4, "conversation":
                                           conv["id"], "input": [{"type": "function_call_output",
                                                                  "call_id": call["call_id"], "output": "Sunny."}]})
    added = st.http("POST", f"/v1/conversations/{conv['id']}/items", json={"items": [{"role": "user",
                                                                                      "content": "more"}]}).json()
    listed = st.http("GET", f"/v1/conversations/{conv['id']}/items?order=asc").json()
    assert [i["type"] for i in listed["data"]] == ["message", "message", "message", "function_call",
                                                   "function_call_output", "message", "message"]
    checks: list[tuple[Any, str]] = [
        (conv, "ConversationResource"), (added, "ConversationItemList"), (listed, "ConversationItemList"),
        (st.http("GET", f"/v1/conversations/{conv['id']}").json(), "ConversationResource"),
        (st.http("POST", f"/v1/conversations/{conv['id']}", json={"metadata": {"x": "y"}}).json(),
         "ConversationResource"),
        (st.http("DELETE", f"/v1/conversations/{conv['id']}/items/{added['data'][0]['id']}").json(),
         "ConversationResource"),
        (st.http("DELETE", f"/v1/conversations/{conv['id']}").json(), "DeletedConversationResource"),
        *((item, "ConversationItem") for item in listed["data"]),
    ]
    for value, component in checks:
        assert spec_errors(value, component) == [], (component, spec_errors(value, component))


def test_a_background_response_extends_its_conversation_when_done(st: StatefulStack) -> None:
    c = st.client()
    conv = c.conversations.create(items=[{"role": "user", "content": "first"}])
    q = c.responses.create(model=M, input="second", conversation=conv.id, background=True, max_output_tokens=3)
    assert q.status == "queued" and q.conversation is not None and q.conversation.id == conv.id
    done = st.wait_status(q.id)
    assert done.status == "incomplete" and done.conversation is not None
    items = c.conversations.items.list(conv.id, order="asc").data
    assert [getattr(i, "role", None) for i in items] == ["user", "user", "assistant"]
    assert items[2].id == done.output[0].id
