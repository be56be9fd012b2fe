"""Item caps on request bodies, checked with len() on the parsed JSON before pydantic sees it.

Why: pydantic validates on the event loop, about 4 µs per message, tool or content part, and collects every
error. Measured on today's code (2 shared cores): a 0.9 MB body of 300k `{}` tools held the loop 2.0 s,
500k `{}` messages (1.5 MB) 1.9 s, 200k `{}` content parts (0.6 MB) 0.74 s, 300k real tools (22 MB) 6.7 s;
/health stopped answering and liveness probes restart a healthy gateway. A worker thread is no cure:
pydantic-core holds the GIL while it validates (`asyncio.to_thread` of 500k messages still stalled the loop
1.4 s; 2048x256 parts, whose Python validator lets the GIL go now and then, 325 ms). So the work is bounded
instead: each list or object a client can make long has a cap (table per API below), and every
"[]" walk goes over lists already capped, so the checks cost ~1-5 ms (the schema walk ~15 ms at its cap).

Measured within the caps (same machine; tests/gateway/test_loop_caps.py::test_worst_body_within_caps_validates_fast,
best of 3, check + validation): 2048 messages x 2 parts 9 ms (all parts wrong: 11 ms, pydantic's error list),
Anthropic 2048 x 2 blocks 20 ms, Responses 2048 items x 2 parts 9 ms, 128 tools with 31k schema values 15 ms,
a prompt of 2**17 token ids 13 ms. So validation stays on the loop (under the ~50 ms aim; a thread would not
help, above). End to end (test_hostile_bodies_leave_health_answering): 14 hostile bodies sent together took
27.9 s and held /health up to 11.8 s before; now 0.7-1.0 s, /health p99 65-200 ms. What is left is orjson's
parse of the raw body and its freeing, before any cap (endpoint/bodyjson.py): 20-55 ms per 1.5 MB of `{}`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from itertools import compress, repeat
from typing import Any

from vlgate.errors import APIError

# -- the limits ---------------------------------------------------------------------------------------------
# OpenAI's spec (openai-openapi.json): CreateChatCompletionRequest.functions maxItems 128, the Assistants'
# tools maxItems 128 ("a maximum of 128 tools"), chat `tools`: "A max of 128 functions are supported".
MAX_TOOLS = 128
# Anthropic publishes no tool count; agents (MCP clients) send more than OpenAI's 128. ~22 µs a tool to
# validate: 512 cost ~11 ms.
MAX_TOOLS_ANTHROPIC = 512
# No published limit (OpenAI's chat spec has none). 2048 turns is past what a llama-server context holds
# (each costs template tokens besides its content) and validates in ~8 ms.
MAX_MESSAGES = 2048
# Content parts (chat parts, Responses input parts, Anthropic blocks, tool_result blocks, system blocks) in
# one message. Not published; images are limited separately (images.limits.max_images).
MAX_PARTS = 256
# ... and in the whole request: 2048 x 256 parts took 2.0 s to validate; 4096 take ~10 ms, ~30 ms when every
# one is wrong (pydantic's error list). Two parts (text and an image or a tool call) for each of 2048 turns.
MAX_PARTS_TOTAL = 4096
# tool_calls in one assistant message: parallel calls of the same tool may outnumber the tools.
MAX_TOOL_CALLS = 256
# OpenAI: StopConfiguration maxItems 4. llama-server takes any number, checking each at every token; 16
# keeps llama.cpp clients working (they send a template's several end words) and the per-token cost bounded.
MAX_STOP = 16
# OpenAI's spec sets no maxProperties on logit_bias; llama-server also takes [[token, bias], ...]. 1024 is
# far over real use (banning a few words' tokens) and costs the sampler nothing much.
MAX_LOGIT_BIAS = 1024
# OpenAI's Metadata: "Set of 16 key-value pairs". Anthropic's metadata has one field (user_id).
MAX_METADATA = 16
# Responses API: input items, like messages (no published limit).
MAX_INPUT_ITEMS = MAX_MESSAGES
# OpenAI embeddings: input arrays maxItems 2048; "a maximum of 300,000 tokens summed across all inputs".
MAX_EMBEDDING_INPUTS = 2048
MAX_EMBEDDING_TOKENS = 300_000
# Token ids in a prompt, /tokenize or /detokenize: 2**17, a 128k context's worth (they must fit the
# backend's n_ctx anyway). A flat prompt of ids is the costly case: pydantic tries `list[str]` first and
# fails each item, ~0.2 µs a token (2**20 ids: 228 ms; 2**17: 29 ms).
MAX_TOKEN_IDS = 1 << 17
# JSON schemas (tool parameters, response formats): nesting depth, and values in all schemas together.
# OpenAI's Structured Outputs allow 5000 object properties and 10 levels of nesting (a property is a few
# values: name, type, description; a level is two JSON levels). orjson writes at most 255 levels (deeper, a
# re-serialized body would be a 500). The walk costs ~0.3 µs a value: 32,768 values ~10 ms.
MAX_SCHEMA_DEPTH = 64
MAX_SCHEMA_NODES = 32_768
# Objects and arrays in a whole body, counted as `{` and `[` bytes before it is parsed at all (bytes.count:
# outside data: URLs, which have neither: a few ms). Parsing is the one cost the item caps cannot bound: 750k
# `{}` objects (1.5 MB) held the loop 20-55 ms in orjson. Everything the caps allow together stays far
# below this (4096 parts, 32k schema values); a prompt with more braces than this is no text a model reads.
MAX_JSON_CONTAINERS = 262_144


@dataclass(frozen=True, slots=True)
class Cap:
    """At most `most` items in the list (or entries in the object) at `path`, at each place it reaches.

    `path`: dotted names; `[]` steps into every item of a list ("messages[].content"). A list stepped into
    must be capped by an earlier row, so walks stay short. `pool`: rows sharing one count across the whole
    request, at most `total` (content parts of all messages)."""

    path: str
    most: int
    pool: str = ""
    total: int = 0


@dataclass(frozen=True, slots=True)
class Schema:
    """The JSON schema at `path`: at most MAX_SCHEMA_DEPTH deep; all schemas together MAX_SCHEMA_NODES values."""

    path: str


Table = tuple[Cap | Schema, ...]



def _parts(path: str) -> Cap:
    """A list of content parts: MAX_PARTS in one, MAX_PARTS_TOTAL in the whole request."""
    return Cap(path, MAX_PARTS, pool="content parts", total=MAX_PARTS_TOTAL)


CHAT: Table = (
    Cap("messages", MAX_MESSAGES),
    _parts("messages[].content"),
    Cap("messages[].tool_calls", MAX_TOOL_CALLS, pool="tool calls", total=MAX_PARTS_TOTAL),
    Cap("tools", MAX_TOOLS),
    Cap("functions", MAX_TOOLS),
    Cap("stop", MAX_STOP),
    Cap("logit_bias", MAX_LOGIT_BIAS),
    Cap("metadata", MAX_METADATA),
    Schema("tools[].function.parameters"),
    Schema("functions[].parameters"),
    Schema("response_format.json_schema.schema"),
)
COMPLETIONS: Table = (
    Cap("prompt", MAX_TOKEN_IDS),
    Cap("prompt[]", MAX_TOKEN_IDS, pool="tokens", total=MAX_TOKEN_IDS),
    Cap("stop", MAX_STOP),
    Cap("logit_bias", MAX_LOGIT_BIAS),
)
EMBEDDINGS: Table = (
    Cap("input", MAX_EMBEDDING_INPUTS),
    Cap("input[]", MAX_EMBEDDING_TOKENS, pool="tokens", total=MAX_EMBEDDING_TOKENS),
)
TOKENIZE: Table = (Cap("content", MAX_TOKEN_IDS),)
DETOKENIZE: Table = (Cap("tokens", MAX_TOKEN_IDS),)
RESPONSES: Table = (
    Cap("input", MAX_INPUT_ITEMS),
    _parts("input[].content"),
    _parts("input[].output"),
    _parts("input[].summary"),
    Cap("tools", MAX_TOOLS),
    Cap("metadata", MAX_METADATA),
    Schema("tools[].parameters"),
    Schema("text.format.schema"),
)
ANTHROPIC: Table = (
    Cap("messages", MAX_MESSAGES),
    _parts("messages[].content"),
    _parts("messages[].content[].content"),  # tool_result blocks
    _parts("system"),
    Cap("tools", MAX_TOOLS_ANTHROPIC),
    Cap("stop_sequences", MAX_STOP),
    Cap("metadata", MAX_METADATA),
    Schema("tools[].input_schema"),
)


def check(body: dict[str, Any], table: Table) -> None:
    """A 400 naming the first list (or object) over its cap. Cheap: the table is compiled once into a tree
    of the body's keys (`_tree`), walked once, with len() on places already bounded. Row by row, the walk
    cost 14.6 µs on a one-message chat, more than pydantic's validation of it (10 µs). The tree walk that
    names places as it goes cost 4.0 µs (1.1 of them hashing the table for its cache); a first walk that
    only answers "within every cap" costs ~1 µs, and the naming walk runs only when it says no."""
    tree = _tree(table)
    if not _within(tree, body, {}):
        _walk(tree, body, (), _Walk())


_TREES: dict[int, tuple[Table, _Node]] = {}


def _tree(table: Table) -> _Node:
    """The compiled tree of a table, found by identity (tables are module constants; hashing one per
    request cost 1.1 µs)."""
    entry = _TREES.get(id(table))
    if entry is None or entry[0] is not table:
        entry = _TREES[id(table)] = (table, _compile(table))
    return entry[1]


class _Node:
    """What applies at one place of a body: a cap, a schema, the places under it by key, and (`items`) in
    each item of the list there."""

    __slots__ = ("cap", "children", "items", "schema")

    def __init__(self) -> None:
        self.cap: Cap | None = None
        self.schema = False
        self.children: dict[str, _Node] = {}
        self.items: _Node | None = None


@functools.cache
def _compile(table: Table) -> _Node:
    root = _Node()
    for row in table:
        node = root
        for name in row.path.split("."):
            node = node.children.setdefault(name.removesuffix("[]"), _Node())
            if name.endswith("[]"):
                node.items = node.items or _Node()
                node = node.items
        if isinstance(row, Schema):
            node.schema = True
        else:
            node.cap = row
    return root


class _Walk:
    __slots__ = ("nodes", "pools")

    def __init__(self) -> None:
        self.pools: dict[str, int] = {}
        self.nodes = 0  # schema values counted so far (MAX_SCHEMA_NODES for all schemas together)


def _walk(node: _Node, value: Any, where: Where, state: _Walk) -> None:
    if node.schema:
        state.nodes += _schema_nodes(value, where, MAX_SCHEMA_NODES - state.nodes)
    is_list = isinstance(value, list)
    if not is_list and not isinstance(value, dict):
        return  # a wrong type is pydantic's to name
    row = node.cap
    if row is not None:
        n = len(value)
        if n > row.most:
            raise _too_many(_param(where), value, row.most)
        if row.pool:
            total = state.pools[row.pool] = state.pools.get(row.pool, 0) + n
            if total > row.total:
                param = _param(where)
                raise APIError(400, f"Invalid '{param}': the request has more than {row.total} "
                               f"{row.pool} in all.", param=param, code="array_above_max_length")
    if is_list:
        items = node.items
        if items is not None:  # only items that can hold more: a C-speed pass over token ids
            for i in compress(range(len(value)), map(isinstance, value, repeat(list | dict))):
                _walk(items, value[i], (*where, i), state)
    elif node.children:
        for key, child in node.children.items():
            if key in value:
                _walk(child, value[key], (*where, key), state)


def _within(node: _Node, value: Any, pools: dict[str, int]) -> bool:
    """True when `value` is within every cap and schema bound under `node`; False when `_walk` has to look
    (and name the place). No places are built here: this is the walk every request pays for."""
    if node.schema:
        return False  # schemas are counted by `_walk` (tools and response formats; rare on the hot path)
    is_list = isinstance(value, list)
    if not is_list and not isinstance(value, dict):
        return True
    row = node.cap
    if row is not None:
        n = len(value)
        if n > row.most:
            return False
        if row.pool:
            total = pools[row.pool] = pools.get(row.pool, 0) + n
            if total > row.total:
                return False
    if is_list:
        items = node.items
        if items is not None:
            for item in compress(value, map(isinstance, value, repeat(list | dict))):
                if not _within(items, item, pools):
                    return False
    elif node.children:
        for key, child in node.children.items():
            if key in value and not _within(child, value[key], pools):
                return False
    return True


def _too_many(param: str, value: list[Any] | dict[str, Any], most: int) -> APIError:
    """OpenAI's own wording and codes for an array or object over its maximum."""
    if isinstance(value, dict):
        return APIError(400, f"Invalid '{param}': too many properties. Expected an object with at most {most} "
                        f"properties, but got an object with {len(value)} properties instead.", param=param,
                        code="object_above_max_properties")
    return APIError(400, f"Invalid '{param}': array too long. Expected an array with maximum length {most}, "
                    f"but got an array with length {len(value)} instead.", param=param,
                    code="array_above_max_length")


Where = tuple[str | int, ...]  # a place in the body: keys and list indexes ("messages", 0, "content")


def _param(where: Where) -> str:
    """A place as OpenAI names it: `messages[0].content`."""
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" if i else p for i, p in enumerate(where))


def _schema_nodes(schema: Any, where: Where, budget: int) -> int:
    """Values in `schema`, counted by len() per object or array (no recursion however deep, no Python step
    per value); a 400 past MAX_SCHEMA_DEPTH or past the `budget` left of MAX_SCHEMA_NODES."""
    count = 1
    todo: list[tuple[Any, int]] = [(schema, 1)] if isinstance(schema, dict | list) else []
    while todo:
        node, depth = todo.pop()
        if depth > MAX_SCHEMA_DEPTH:
            param = _param(where)
            raise APIError(400, f"Invalid '{param}': the JSON schema is nested more than {MAX_SCHEMA_DEPTH} "
                           "levels deep.", param=param, code="schema_too_deep")
        count += len(node)
        if count > budget:
            param = _param(where)
            raise APIError(400, f"Invalid '{param}': the request's JSON schemas have more than {MAX_SCHEMA_NODES} "
                           "values in all.", param=param, code="schema_too_large")
        values = node.values() if isinstance(node, dict) else node
        todo.extend(zip(compress(values, map(isinstance, values, repeat(dict | list))), repeat(depth + 1)))
    return count
