"""Hand-set weights that give the random tiny model just enough "taste" to finish JSON under a grammar.

Why: llama-server's grammar sampler only masks tokens; among the allowed ones a purely random model
picks at random, opens strings it never closes and runs to `max_tokens` with the JSON half-written.
A few reserved residual dimensions fix that without any training:

- dim 0 is a constant 1 (embedding 1.0; random layers neither read nor write dims < RESERVED), so after
  the final RMSNorm it is large and positive (~5.7): `output.weight[:, 0]` is each token's prior. Plain
  words get 0 (plus the random part, which varies with context), JSON punctuation -6, whitespace -12,
  the EOS -8, grounding tokens -9 and every other special or odd-byte token -14 (logits near -34 / -68
  / -45 / -51 / -79; the largest boosted logit in plain text is about +37, so a request's logit_bias
  of +100 still forces a grounding token). Without a grammar the model never stops early and writes
  ASCII words and quotes (backticks are banned too: b11434's json_schema grammar allows a ```json fence).
- one dim per *kind* of the current token (a one-hot in the embedding): after `{`, `[`, `,` or `:` the
  next token prefers a plain `"`; after an open quote, a word; after a word (or number, `}`, `]`,
  whitespace) a token starting with `"`, then `}` / `]`, then `,`: strings are one or two words, values
  are followed by `}`, objects close. Under a grammar the masked-out preferences simply drop away; when
  only whitespace or EOS is allowed (the root value is complete, or a tool call block is) EOS wins.
- tool flags: layer 0's last two attention heads look up `<tool_call>` / `</tool_call>` and
  `<tool_response>` / `</tool_response>` tokens in the context (query from the constant dim, key from a
  marker dim, on the head's last rope pair, which barely rotates at freq_base 1e6) and copy a 1 into
  DIM_TOOL / DIM_RESULT. Two units of layer 0's FFN turn them into "tools, no result yet, and the
  current token is whitespace" (as the `\n` that ends the generation prompt) and "tools, and the
  current token closes an object". `<tool_call>`'s output row reads the first (+30): with tools in the
  prompt the answer starts with a tool call; without tools, after a tool result or anywhere else
  (inside JSON strings) it does not. `</tool_call>` reads the second, so a call block closes after its
  object rather than taking a second one; then EOS. After `<tool_call>` comes its newline.
"""

from __future__ import annotations

from enum import IntEnum

import gguf
import numpy as np

from vlgate.tinymodel.vocab import (
    EOS,
    GROUNDING_TOKENS,
    RESPONSE_TOKENS,
    TOOL_TOKENS,
    Vocab,
    decode_symbols,
)

N_KINDS = 9
DIM_ONE, DIM_KIND0 = 0, 1
DIM_TOOL_KEY = DIM_KIND0 + N_KINDS  # the token is `<tool_call>` / `</tool_call>`
DIM_TOOL = DIM_TOOL_KEY + 1  # tools are in the context
DIM_RESULT_KEY = DIM_TOOL + 1  # the token is `<tool_response>` / `</tool_response>`
DIM_RESULT = DIM_RESULT_KEY + 1  # a tool result is in the context
DIM_CALL_START = DIM_RESULT + 1  # tools, no result yet, and the current token is whitespace
DIM_CALL_END = DIM_CALL_START + 1  # tools and the current token closes an object
RESERVED = DIM_CALL_END + 1  # random weights never read or write dims below this
ROPE_FREQ_BASE = 1e6
LOOKUP_SCORE = 2.0
CALL_START_BOOST, CALL_END_BOOST = 30.0, 22.0


class Kind(IntEnum):
    """What the current token was, which decides what the next token prefers."""

    WORD = 0
    QUOTE = 1  # ends with `"`: opens or closes a string
    OPEN = 2  # ends with `{`, `[` or `,`
    COLON = 3
    CLOSE = 4  # ends with `}` or `]`
    SPACE = 5
    SPECIAL = 6
    END_CALL = 7  # `</tool_call>`
    TOOL_OPEN = 8  # `<tool_call>`


class Group(IntEnum):
    """How a candidate next token starts (what the kinds prefer)."""

    FREE = 0  # words, digits, prose punctuation
    QUOTE = 1  # just a quote (spaces aside): opens or closes a string
    QUOTE_CLOSE = 2  # a quote then only closers (`"}`, `"]}`): ends a string and objects
    CLOSE = 3  # only closers: `}`, `]`, `}}` ...
    COMMA = 4
    COLON = 5
    OPEN = 6
    MIXED = 7  # any other punctuation run (`",`, `},`, `{"`): no preference, so rarely picked
    SPACE = 8
    NEWLINE = 9  # whitespace starting with a newline
    EOS = 10
    TOOL_CALL = 11
    END_CALL = 12
    GROUNDING = 13  # `<box>`, `<x_N>` ...
    BANNED = 14  # other special tokens, backslash, backtick, control and non-ASCII bytes


PRIOR = {Group.FREE: 0.0, Group.SPACE: -12.0, Group.NEWLINE: -12.0, Group.EOS: -8.0, Group.TOOL_CALL: -14.0,
         Group.END_CALL: -14.0, Group.GROUNDING: -9.0, Group.BANNED: -14.0}
STRUCTURAL_PRIOR = -6.0
_AFTER_VALUE = {Group.QUOTE: 10.0, Group.QUOTE_CLOSE: 10.0, Group.CLOSE: 8.0, Group.COMMA: 6.0}
BOOSTS: dict[Kind, dict[Group, float]] = {
    Kind.WORD: _AFTER_VALUE,
    # after `}`: `</tool_call>` before `,` (b11434 allows several calls in one block); in a string `"` first
    Kind.CLOSE: {Group.QUOTE: 10.0, Group.QUOTE_CLOSE: 10.0, Group.CLOSE: 8.0, Group.END_CALL: 12.0},
    Kind.SPACE: _AFTER_VALUE,
    Kind.SPECIAL: _AFTER_VALUE,
    Kind.OPEN: {Group.QUOTE: 10.0},
    Kind.COLON: {Group.QUOTE: 10.0},
    Kind.QUOTE: {Group.FREE: 6.0, Group.CLOSE: 2.0, Group.COMMA: 1.0, Group.COLON: 1.0},
    Kind.TOOL_OPEN: {Group.NEWLINE: 50.0},  # the call's "\n" must beat another `<tool_call>`
    Kind.END_CALL: {Group.EOS: 20.0},  # `</tool_call>` only comes in a tool context: stop there
}
_STRUCT = {'"': Group.QUOTE, "}": Group.CLOSE, "]": Group.CLOSE, ",": Group.COMMA, ":": Group.COLON,
           "{": Group.OPEN, "[": Group.OPEN}
_CLOSERS = set("}] \t\n")
_LAST = {'"': Kind.QUOTE, "{": Kind.OPEN, "[": Kind.OPEN, ",": Kind.OPEN, ":": Kind.COLON, "}": Kind.CLOSE,
         "]": Kind.CLOSE}


def classify(vocab: Vocab, token_id: int) -> tuple[Kind, Group]:
    """The token's kind (as the current token) and group (as a candidate next token)."""
    token = vocab.tokens[token_id]
    if token == EOS:
        return Kind.SPECIAL, Group.EOS
    if token == TOOL_TOKENS[0]:
        return Kind.TOOL_OPEN, Group.TOOL_CALL
    if token == TOOL_TOKENS[1]:
        return Kind.END_CALL, Group.END_CALL
    if token in GROUNDING_TOKENS:
        return Kind.SPECIAL, Group.GROUNDING
    if vocab.types[token_id] != gguf.TokenType.NORMAL:
        return Kind.SPECIAL, Group.BANNED
    raw = decode_symbols(token)
    if any((b < 0x20 and b not in b"\t\n") or b >= 0x7F or b in b"\\`" for b in raw):
        return Kind.SPECIAL, Group.BANNED
    text = raw.decode()
    stripped = text.strip()
    if not stripped:
        return Kind.SPACE, Group.NEWLINE if text.startswith("\n") else Group.SPACE
    kind = _LAST.get(stripped[-1], Kind.WORD)
    if len(stripped) == 1 and stripped in _STRUCT:
        return kind, _STRUCT[stripped]
    if set(stripped) <= _CLOSERS:
        return kind, Group.CLOSE
    if stripped[0] == '"' and set(stripped[1:]) <= _CLOSERS:
        return kind, Group.QUOTE_CLOSE
    if any(ch in _STRUCT for ch in stripped):
        return kind, Group.MIXED if stripped[0] in _STRUCT else Group.BANNED
    return kind, Group.FREE


def embedding(vocab: Vocab, rng: np.random.Generator, n_embd: int) -> np.ndarray:
    """Random small values, the constant dim, the kind one-hot and the tool-lookup key."""
    embd = (rng.standard_normal((len(vocab.tokens), n_embd)) * 0.02).astype(np.float32)
    embd[:, :RESERVED] = 0.0
    embd[:, DIM_ONE] = 1.0
    for tid in range(len(vocab.tokens)):
        embd[tid, DIM_KIND0 + classify(vocab, tid)[0]] = 1.0
        if vocab.tokens[tid] in TOOL_TOKENS:
            embd[tid, DIM_TOOL_KEY] = 1.0
        if vocab.tokens[tid] in RESPONSE_TOKENS:
            embd[tid, DIM_RESULT_KEY] = 1.0
    return embd


def output(vocab: Vocab, rng: np.random.Generator, n_embd: int) -> np.ndarray:
    """`output.weight`: priors on dim 0, kind preferences on the kind dims, random parts for words only."""
    out = rng.standard_normal((len(vocab.tokens), n_embd)).astype(np.float32)
    out[:, :RESERVED] = 0.0
    for tid in range(len(vocab.tokens)):
        _, group = classify(vocab, tid)
        if group != Group.FREE:
            out[tid, RESERVED:] = 0.0
        out[tid, DIM_ONE] = PRIOR.get(group, STRUCTURAL_PRIOR)
        for kind, prefs in BOOSTS.items():
            out[tid, DIM_KIND0 + kind] = prefs.get(group, 0.0)
    out[vocab.id(TOOL_TOKENS[0]), DIM_CALL_START] = CALL_START_BOOST
    out[vocab.id(TOOL_TOKENS[1]), DIM_CALL_END] = CALL_END_BOOST
    return out


def lookup_heads(q: np.ndarray, k: np.ndarray, v: np.ndarray, o: np.ndarray, n_head: int) -> None:
    """Turn a layer's last two heads into the tool / tool-result lookups (in place; weights are [out, in])."""
    head_dim = q.shape[0] // n_head
    for head, key, flag in ((n_head - 1, DIM_TOOL_KEY, DIM_TOOL), (n_head - 2, DIM_RESULT_KEY, DIM_RESULT)):
        rows = slice(head * head_dim, (head + 1) * head_dim)
        d = (head + 1) * head_dim - 2  # first dim of the head's last (slowest) rope pair
        for m in (q, k, v):
            m[rows] = 0.0
        o[:, rows] = 0.0
        # RMSNorm makes a present dim about 4..5.7: score ≈ 2*5.7 * 2*4.6 / sqrt(16) ≈ 26 on marker tokens
        q[d, DIM_ONE] = LOOKUP_SCORE
        k[d, key] = LOOKUP_SCORE
        v[d, key] = 0.22  # ≈ 1.0 copied into the flag
        o[flag, d] = 1.0


def tool_gates(gate: np.ndarray, up: np.ndarray, down: np.ndarray) -> None:
    """FFN units 0 and 1 compute "tools AND whitespace AND NOT result" / "tools AND closer" (in place).

    After ffn_norm a present reserved dim is about 4.6 (dim 0, kind, tool flag): the gate's sum passes
    its threshold only when both inputs are there; SiLU is ~0 below it and ~linear above. A tool result
    in the context pulls the first gate far below: after a tool round trip the model answers in text.
    """
    for unit, kind, target in ((0, Kind.SPACE, DIM_CALL_START), (1, Kind.CLOSE, DIM_CALL_END)):
        gate[unit], up[unit], down[:, unit] = 0.0, 0.0, 0.0
        gate[unit, DIM_TOOL] = gate[unit, DIM_KIND0 + kind] = 4.0
        gate[unit, DIM_ONE] = -4.0 * 7.5 / 4.6  # the constant dim carries the threshold
        up[unit, DIM_ONE] = 1 / 4.6
        gate[unit, DIM_RESULT] = -8.0 if target == DIM_CALL_START else 0.0
        down[target, unit] = 1 / 6.8  # silu(4 * (4.6 + 4.6 - 7.5)) ≈ 6.8
