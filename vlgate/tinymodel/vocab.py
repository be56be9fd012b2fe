"""The tiny model's GPT-2-style byte-level BPE vocabulary (`tokenizer.ggml.model` "gpt2", pre "qwen2").

Why byte-level BPE: llama-server's grammar sampler is prefilled with the chat prompt's generation
prefix; a SentencePiece vocab spells `<|im_start|>assistant\\n` with a leading "▁" and every
grammar-constrained request (`response_format`, `tool_choice: "required"`) then fails with 400 "Failed
to initialize samplers". The real Youtu-VL GGUF is byte-level BPE too.

Layout: the 256 byte-level symbols first (in byte order), then the tokens of a small deterministic BPE
merge training over English words and JSON / tool-call pieces (pre-tokenized with the qwen2 regex,
written here for ASCII, which is all the corpus holds), then the special tokens: ChatML CONTROL tokens
and USER_DEFINED `<tool_call>`, `<tool_response>` (and their ends) and the Youtu-VL grounding tokens.
"""

from __future__ import annotations

import itertools
import json
import re
from collections import Counter
from dataclasses import dataclass
from functools import cache

import gguf

N_MERGES = 600

CONTROL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
TOOL_TOKENS = ("<tool_call>", "</tool_call>")
RESPONSE_TOKENS = ("<tool_response>", "</tool_response>")
GROUNDING_TOKENS = (
    ("<ref>", "</ref>", "<box>", "</box>")
    + tuple(f"<x_{i}>" for i in range(16))
    + tuple(f"<y_{i}>" for i in range(16))
)
EOS, BOS = "<|im_end|>", "<|endoftext|>"

# qwen2's pre-tokenizer regex with \p{L} -> [A-Za-z] and \p{N} -> [0-9] (the corpus is ASCII)
_PRETOKEN = re.compile(
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\nA-Za-z0-9]?[A-Za-z]+|[0-9]| ?[^\sA-Za-z0-9]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_WORD_TEXT = (
    "the a an is are was of and or to in on at for with from by it this that what which who how "
    "hello world cat dog image picture box red blue green small large left right top bottom person "
    "car tree house sky water city weather today time date name value type object string number "
    "integer boolean array list item items id title description result answer query search find get "
    "set add call tool function arguments parameters properties required location unit celsius "
    "fahrenheit temperature Paris London Tokyo Berlin yes no true false null one two three count "
    "text label score color size age email user message content reply please thanks good new old"
)
_WORDS = _WORD_TEXT.split()


@dataclass(frozen=True)
class Vocab:
    """Token texts (GGUF form), their types and the ranked merges, ready for the GGUF writer."""

    tokens: list[str]
    types: list[int]
    merges: list[str]

    def id(self, token: str) -> int:
        return self.tokens.index(token)


@cache
def byte_symbols() -> tuple[str, ...]:
    """GPT-2's bytes_to_unicode: the printable stand-in character for each byte 0..255."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    return tuple(chr(b) if b in keep else chr(next(extra)) for b in range(256))


@cache
def _byte_of() -> dict[str, int]:
    return {ch: b for b, ch in enumerate(byte_symbols())}


def decode_symbols(token: str) -> bytes:
    """The bytes a NORMAL token stands for (inverse of byte_symbols)."""
    return bytes(_byte_of()[ch] for ch in token)


def _corpus() -> Counter[str]:
    """Pre-token frequencies of a small fixed corpus: words (bare and after a space) and JSON pieces."""
    samples = [
        {"name": "Paris", "age": 3, "city": "London", "items": ["cat", "dog"], "ok": True, "value": None},
        {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]},
        {"name": "get_weather", "arguments": {"location": "Tokyo", "unit": "celsius"}},
        {"title": "red box", "score": 0.5, "count": 12, "label": "person", "description": "a small cat"},
    ]
    text = [" ".join(_WORDS), " ".join(w.capitalize() for w in _WORDS), "\n".join(_WORDS)]
    for sample in samples:
        text += [json.dumps(sample), json.dumps(sample, separators=(",", ":")), json.dumps(sample, indent=2)]
    text.append('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>')
    counts: Counter[str] = Counter()
    for chunk in text:
        counts.update(_PRETOKEN.findall(chunk))
    counts.update(_WORDS)  # bare words (after a special token, e.g. "<ref>cat</ref>")
    return counts


def train_merges(n_merges: int = N_MERGES) -> list[tuple[str, str]]:
    """Plain BPE: repeatedly merge the most frequent adjacent pair (ties: smallest pair), deterministic.

    Pair counts are kept up to date incrementally (only words holding the merged pair are re-split).
    """
    sym = byte_symbols()
    corpus = _corpus()
    words = [[sym[b] for b in w.encode()] for w in corpus]
    freq = list(corpus.values())
    pairs: Counter[tuple[str, str]] = Counter()
    where: dict[tuple[str, str], set[int]] = {}

    def count(i: int, sign: int) -> None:
        for pair in itertools.pairwise(words[i]):
            pairs[pair] += sign * freq[i]
            where.setdefault(pair, set()).add(i)

    for i in range(len(words)):
        count(i, 1)
    merges: list[tuple[str, str]] = []
    while len(merges) < n_merges and +pairs:
        best = min(+pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        for i in sorted(where.pop(best, ())):
            count(i, -1)
            old, new = words[i], []
            k = 0
            while k < len(old):
                if k + 1 < len(old) and (old[k], old[k + 1]) == best:
                    new.append(old[k] + old[k + 1])
                    k += 2
                else:
                    new.append(old[k])
                    k += 1
            words[i] = new
            count(i, 1)
    return merges


@cache
def tiny_vocab() -> Vocab:
    """Byte symbols, merge results (in merge order), then the special tokens."""
    T = gguf.TokenType
    merges = train_merges()
    tokens = list(byte_symbols())
    seen = set(tokens)
    for a, b in merges:
        if a + b not in seen:
            seen.add(a + b)
            tokens.append(a + b)
    types = [int(T.NORMAL)] * len(tokens)
    user_defined = [*TOOL_TOKENS, *RESPONSE_TOKENS, *GROUNDING_TOKENS]
    tokens += [*CONTROL_TOKENS, *user_defined]
    types += [int(T.CONTROL)] * len(CONTROL_TOKENS) + [int(T.USER_DEFINED)] * len(user_defined)
    return Vocab(tokens, types, [f"{a} {b}" for a, b in merges])
