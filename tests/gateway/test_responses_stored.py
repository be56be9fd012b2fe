"""Stored responses through the gateway to a real llama-server, with the strict openai SDK: `store`,
`previous_response_id` chains (images kept, instructions not), retrieve / delete / input items, background
runs with polling and cancel, two keys that cannot see each other's responses, and a restart on the same
SQLite data dir."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from support import statefulgw
from support.postgres import postgres_server  # noqa: F401  (fixture)
from support.statefulgw import KEY_B, LEASE_S, StatefulStack, spec_errors, stateful_stack, store_url

pytestmark = pytest.mark.slow
M = "youtu-vl"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def st(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, llama_server_bin,
       tiny_model) -> Iterator[StatefulStack]:
    """The same tests on the embedded store and on a real PostgreSQL server."""
    tmp = tmp_path_factory.mktemp("stored")
    with store_url(request) as url, stateful_stack(tmp, llama_server_bin, tiny_model, ctx=8192,
                                                   storage_url=url) as stack:
        yield stack


def png(size: tuple[int, int] = (1000, 700)) -> str:
    return statefulgw.png(size, (200, 30, 30))


error_of = statefulgw.sdk_error


def test_store_retrieve_and_input_items(st: StatefulStack) -> None:
    c = st.client()
    image = png()
    r = c.responses.create(model=M, max_output_tokens=4, instructions="Be brief.", metadata={"run": "1"}, input=[
        {"role": "user", "content": [{"type": "input_image", "image_url": image}, {"type": "input_text", "text": "a"}]},
        {"role": "user", "content": "b"}, {"type": "message", "role": "user", "content": "c"}])
    assert r.id.startswith("resp_") and r.store is True and r.background is False
    got = c.responses.retrieve(r.id)
    assert got.model_dump() == r.model_dump()  # the stored object is what the client saw, id included
    items = c.responses.input_items.list(r.id, order="asc")
    assert [i.type for i in items.data] == ["message"] * 3 and not items.has_more
    first = items.data[0]
    assert first.type == "message" and first.role == "user" and first.status == "completed"
    kept = first.content[0]
    # the image is kept as the gateway normalized it (resized to the model's grid): never fetched again
    assert kept.type == "input_image" and kept.detail == "auto" and kept.image_url != image
    assert kept.image_url is not None and kept.image_url.startswith("data:image/")
    assert [p.type for p in items.data[1].content] == ["input_text"]  # a string content as OpenAI lists it
    # `order` and paging (default newest first, as OpenAI's)
    newest = c.responses.input_items.list(r.id)
    assert [i.id for i in newest.data] == [i.id for i in reversed(items.data)]
    page = c.responses.input_items.list(r.id, limit=2, order="asc")
    assert [i.id for i in page.data] == [i.id for i in items.data[:2]] and page.has_more
    rest = c.responses.input_items.list(r.id, limit=2, order="asc", after=page.data[-1].id)
    assert [i.id for i in rest.data] == [items.data[2].id] and not rest.has_more
    assert [i.id for i in c.responses.input_items.list(r.id, order="asc", limit=1)] == [i.id for i in items.data]


def test_previous_response_id_chains_input_and_output_not_instructions(st: StatefulStack) -> None:
    c = st.client()
    image = png((320, 240))
    r1 = c.responses.create(model=M, max_output_tokens=5, instructions="You are a very long system prompt " * 20,
                            input=[{"role": "user", "content": [{"type": "input_image", "image_url": image},
                                                                {"type": "input_text", "text": "what is it?"}]}])
    r2 = c.responses.create(model=M, max_output_tokens=5, input="and then?", previous_response_id=r1.id)
    assert r2.previous_response_id == r1.id and r2.instructions is None
    r3 = c.responses.create(model=M, max_output_tokens=5, input=[{"role": "user", "content": "third"}],
                            previous_response_id=r2.id, temperature=0)
    # the same conversation sent whole, statelessly: the model saw exactly that (no instructions, image kept)
    explicit = [{"role": "user", "content": [{"type": "input_image", "image_url": image},
                                             {"type": "input_text", "text": "what is it?"}]},
                {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": r1.output_text}]},
                {"role": "user", "content": "and then?"},
                {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": r2.output_text}]},
                {"role": "user", "content": "third"}]
    same = c.responses.create(model=M, max_output_tokens=5, input=explicit, store=False, temperature=0)
    assert r3.usage is not None and same.usage is not None
    assert r3.usage.input_tokens == same.usage.input_tokens
    assert r3.output_text == same.output_text  # greedy: the same prompt (image pixels included), the same answer
    # the count route reads chains too
    counted = c.responses.input_tokens.count(model=M, input=[{"role": "user", "content": "third"}],
                                             previous_response_id=r2.id)
    assert counted.input_tokens == c.responses.input_tokens.count(model=M, input=explicit).input_tokens
    # each response keeps only its own new input
    assert [i.type for i in c.responses.input_items.list(r3.id)] == ["message"]


def test_stream_is_stored_before_its_end(st: StatefulStack) -> None:
    """The final event is held until the response is stored: retrieve and continue at once."""
    c = st.client()
    finals = []
    with c.responses.stream(model=M, input="stream me", max_output_tokens=6) as stream:
        for event in stream:
            if event.type in ("response.completed", "response.incomplete"):
                got = c.responses.retrieve(event.response.id)  # while the stream is still open
                assert got.output_text == event.response.output_text and got.status == event.response.status
                finals.append(event.response)
    assert len(finals) == 1
    final = finals[0]
    events = list(c.responses.create(model=M, input="x", max_output_tokens=3, stream=True))
    ids = {e.response.id for e in events if hasattr(e, "response")}  # created, in_progress, incomplete: one id
    assert len(ids) == 1 and c.responses.retrieve(ids.pop()).status == events[-1].response.status
    again = c.responses.create(model=M, input="more", max_output_tokens=3, previous_response_id=final.id)
    assert again.previous_response_id == final.id


def test_store_false_keeps_nothing(st: StatefulStack) -> None:
    c = st.client()
    before = st.rows("SELECT COUNT(*) FROM records")[0][0]
    r = c.responses.create(model=M, input="forget me", max_output_tokens=3, store=False)
    assert r.store is False
    assert st.rows("SELECT COUNT(*) FROM records")[0][0] == before
    assert error_of(lambda: c.responses.retrieve(r.id))[0] == 404
    status, body = error_of(lambda: c.responses.create(model=M, input="x", previous_response_id=r.id))
    unknown_status, unknown = error_of(lambda: c.responses.create(model=M, input="x", previous_response_id="resp_nope"))
    assert status == unknown_status == 400
    assert body["message"].replace(r.id, "ID") == unknown["message"].replace("resp_nope", "ID")
    assert body["code"] == unknown["code"] == "previous_response_not_found"


def test_another_keys_response_is_an_unknown_id(st: StatefulStack) -> None:
    a, b = st.client(), st.client(KEY_B)
    r = a.responses.create(model=M, input="mine", max_output_tokens=3)
    bg = a.responses.create(model=M, input="mine too", max_output_tokens=3, background=True)
    calls = {"retrieve": lambda i: b.responses.retrieve(i), "delete": lambda i: b.responses.delete(i),
             "cancel": lambda i: b.responses.cancel(i), "input_items": lambda i: b.responses.input_items.list(i)}
    for name, call in calls.items():
        for id in (r.id, bg.id):
            theirs = error_of(lambda: call(id))  # noqa: B023
            unknown = error_of(lambda: call("resp_0123"))  # noqa: B023
            assert theirs[0] == unknown[0] == 404, name
            assert theirs[1]["message"].replace(id, "ID") == unknown[1]["message"].replace("resp_0123", "ID"), name
            assert {k: v for k, v in theirs[1].items() if k != "message"} == \
                {k: v for k, v in unknown[1].items() if k != "message"}
    status, body = error_of(lambda: b.responses.create(model=M, input="x", previous_response_id=r.id))
    assert status == 400 and body["code"] == "previous_response_not_found"
    assert a.responses.retrieve(r.id).id == r.id  # still there for its owner
    assert st.wait_status(bg.id).status in ("completed", "incomplete")


def test_delete_takes_its_input_items(st: StatefulStack) -> None:
    c = st.client()
    r = c.responses.create(model=M, input=[{"role": "user", "content": "one"}, {"role": "user", "content": "two"}],
                           max_output_tokens=3)
    assert st.rows("SELECT COUNT(*) FROM records WHERE parent = ?", r.id)[0][0] == 2
    reply = st.http("DELETE", f"/v1/responses/{r.id}")
    assert reply.status_code == 200 and reply.json() == {"id": r.id, "object": "response", "deleted": True}
    assert st.rows("SELECT COUNT(*) FROM records WHERE id = ? OR parent = ?", r.id, r.id)[0][0] == 0
    assert error_of(lambda: c.responses.retrieve(r.id))[0] == 404
    assert error_of(lambda: c.responses.input_items.list(r.id))[0] == 404
    assert error_of(lambda: c.responses.delete(r.id))[0] == 404


def test_bad_state_requests_are_clear_400s(st: StatefulStack) -> None:
    c = st.client()
    conv = c.conversations.create()
    r = c.responses.create(model=M, input="x", max_output_tokens=2)
    cases = {
        "conversation": lambda: c.responses.create(model=M, input="x", previous_response_id=r.id, conversation=conv.id),
        "background": lambda: c.responses.create(model=M, input="x", background=True, store=False),
        "stream": lambda: c.responses.create(model=M, input="x", background=True, stream=True),
        "metadata": lambda: c.responses.create(model=M, input="x", metadata={f"k{i}": "v" for i in range(17)}),
        "metadata.k": lambda: c.responses.create(model=M, input="x", metadata={"k": "v" * 513}),
    }
    for param, call in cases.items():
        status, body = error_of(call)
        assert status == 400 and body["param"] == param and body["type"] == "invalid_request_error", body
    assert error_of(lambda: c.responses.cancel(r.id))[0] == 400  # not a background response
    reply = st.http("GET", f"/v1/responses/{r.id}?stream=true")
    assert reply.status_code == 400 and reply.json()["error"]["param"] == "stream"
    assert st.http("GET", "/v1/responses/" + r.id, key="sk-wrong").status_code == 401


def test_background_polls_to_the_answer(st: StatefulStack) -> None:
    c = st.client()
    image = png((64, 48))
    q = c.responses.create(model=M, max_output_tokens=6, background=True, metadata={"job": "7"}, temperature=0,
                           input=[{"role": "user", "content": [{"type": "input_image", "image_url": image},
                                                               {"type": "input_text", "text": "describe"}]}])
    assert q.status == "queued" and q.background is True and q.store is True and q.output == []
    done = st.wait_status(q.id)
    assert done.status == "incomplete" and done.output_text and done.id == q.id
    assert done.background is True and done.metadata == {"job": "7"} and done.usage is not None
    same = c.responses.create(model=M, max_output_tokens=6, store=False, temperature=0,
                              input=[{"role": "user", "content": [{"type": "input_image", "image_url": image},
                                                                  {"type": "input_text", "text": "describe"}]}])
    assert same.usage is not None and done.usage.input_tokens == same.usage.input_tokens
    assert done.output_text == same.output_text  # the same request as a live one (greedy): image and all
    assert [i.type for i in c.responses.input_items.list(q.id)] == ["message"]
    follow = c.responses.create(model=M, input="and?", max_output_tokens=2, previous_response_id=q.id)
    assert follow.previous_response_id == q.id


def test_cancel_a_running_background_response(st: StatefulStack) -> None:
    c = st.client()
    for _attempt in range(3):  # the tiny model writes 3500 tokens in ~2 s: on a loaded machine it may finish first
        q = c.responses.create(model=M, input="write a lot", max_output_tokens=3500, background=True)
        assert st.wait_status(q.id, ("in_progress",), timeout=10).status == "in_progress"
        cancelled = c.responses.cancel(q.id)
        if cancelled.status == "cancelled":
            break
        # too late: answered as it stands, and that is the state that lasts
        assert cancelled.status in ("completed", "incomplete")
        assert st.wait_status(q.id).status == cancelled.status
    assert cancelled.status == "cancelled" and cancelled.id == q.id
    assert c.responses.cancel(q.id).status == "cancelled"  # again: the same answer
    time.sleep(LEASE_S)  # the run is gone: nothing overwrites the cancel later
    assert c.responses.retrieve(q.id).status == "cancelled" and c.responses.retrieve(q.id).output == []
    finished = c.responses.create(model=M, input="short", max_output_tokens=3, background=True)
    assert st.wait_status(finished.id).status == "incomplete"
    assert c.responses.cancel(finished.id).status == "incomplete"  # too late: answered as it stands
    # the backend call was dropped: llama-server's slots are idle again (it polls for a closed connection
    # every second; on a loaded machine its loop takes longer to get there)
    deadline = time.monotonic() + 10
    while busy := [s for s in httpx.get(st.llama.url + "/slots", timeout=5).json() if s["is_processing"]]:
        assert time.monotonic() < deadline, busy
        time.sleep(0.1)


def test_cancel_racing_the_completion_has_one_outcome(st: StatefulStack) -> None:
    """Cancels sent around the time runs finish: each cancel's answer is the state that lasts."""
    c = st.client()
    queued = [c.responses.create(model=M, input=f"race {i}", max_output_tokens=40 + 40 * i, background=True)
              for i in range(8)]

    def cancel(job: tuple[int, Any]) -> tuple[str, Any]:
        i, q = job
        time.sleep(0.02 * i)
        return c.responses.cancel(q.id).status, q.id

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(cancel, enumerate(queued)))
    time.sleep(LEASE_S)
    for status, id in answers:
        final = st.wait_status(id)
        assert final.status == status, (id, status, final.status)
        assert status in ("cancelled", "completed", "incomplete")
        if status == "cancelled":
            assert final.output == [] and final.usage is None


def test_restart_keeps_responses_and_fails_lost_background_runs(st: StatefulStack) -> None:
    c = st.client()
    r = c.responses.create(model=M, input="remember this", max_output_tokens=4)
    lost = c.responses.create(model=M, input="long job", max_output_tokens=3500, background=True)
    assert st.wait_status(lost.id, ("in_progress",), timeout=10).status == "in_progress"
    st.restart(signal.SIGKILL)  # a crash: the run's lease is never renewed again
    c = st.client()
    got = c.responses.retrieve(r.id)
    assert got.output_text == r.output_text and got.id == r.id
    follow = c.responses.create(model=M, input="and now?", max_output_tokens=3, previous_response_id=r.id)
    assert follow.previous_response_id == r.id
    counted = c.responses.input_tokens.count(model=M, input="and now?", previous_response_id=r.id)
    assert follow.usage is not None and follow.usage.input_tokens == counted.input_tokens
    failed = st.wait_status(lost.id, ("failed",), timeout=LEASE_S * 3)
    assert failed.status == "failed" and failed.error is not None and failed.error.code == "server_error"
    assert "restarted" in failed.error.message


def test_objects_conform_to_the_spec(st: StatefulStack) -> None:
    """The raw JSON, checked against the official spec's schemas (the SDK's strict models above too)."""
    tools = [{"type": "function", "name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
    made = st.http("POST", "/v1/responses", json={"model": M, "input": "Weather in Paris?", "tools": tools,
                                                  "max_output_tokens": 60, "metadata": {"a": "b"}})
    assert made.status_code == 200, made.text
    r = made.json()
    assert [o["type"] for o in r["output"]] == ["function_call"]
    call = r["output"][0]
    follow = st.http("POST", "/v1/responses", json={
        "model": M, "previous_response_id": r["id"], "tools": tools, "max_output_tokens": 4,
        "input": [{"type": "function_call_output", "call_id": call["call_id"], "output": "Sunny."}]}).json()
    queued = st.http("POST", "/v1/responses", json={"model": M, "input": "later", "max_output_tokens": 2,
                                                    "background": True}).json()
    for response in (r, follow, queued, st.http("GET", f"/v1/responses/{follow['id']}").json()):
        assert spec_errors(response, "Response") == [], spec_errors(response, "Response")
    for id in (r["id"], follow["id"]):
        items = st.http("GET", f"/v1/responses/{id}/input_items").json()
        assert items["data"] and spec_errors(items, "ResponseItemList") == [], items
    assert st.wait_status(queued["id"]).status == "incomplete"
    assert spec_errors(st.http("GET", f"/v1/responses/{queued['id']}").json(), "Response") == []
