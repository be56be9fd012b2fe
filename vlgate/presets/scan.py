"""Tag scanning shared by the parsers: tolerant of truncation (an unclosed last block still counts)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from vlgate.presets.coords import COORD_RE, number


@dataclass(frozen=True, slots=True)
class Block:
    start: int  # of the opening tag
    end: int  # after the closing tag (or where the unclosed block stops)
    inner: str
    closed: bool


def blocks(text: str, *tags: str) -> list[Block]:
    """`<tag>inner</tag>` spans in order; an unclosed block runs to the next opening of the same tags or the end."""
    opener = re.compile("|".join(f"<{re.escape(t)}>" for t in tags))
    out: list[Block] = []
    pos = 0
    while (m := opener.search(text, pos)) is not None:
        tag = m.group(0)[1:-1]
        close = f"</{tag}>"
        body_start = m.end()
        c = text.find(close, body_start)
        nxt = opener.search(text, body_start)
        if c != -1 and (nxt is None or c < nxt.start()):
            out.append(Block(m.start(), c + len(close), text[body_start:c], True))
            pos = c + len(close)
        else:
            stop = nxt.start() if nxt is not None else len(text)
            out.append(Block(m.start(), stop, text[body_start:stop], False))
            pos = stop
    return out


def blank(text: str, spans: list[Block]) -> str:
    """The text with these spans replaced by spaces (offsets stay valid for label lookup)."""
    if not spans:
        return text
    chars = list(text)
    for b in spans:
        chars[b.start : b.end] = " " * (b.end - b.start)
    return "".join(chars)


def refs(text: str) -> list[tuple[int, str | None]]:
    """(offset, label) of every `<ref>label</ref>` or `<label>label</label>` (vis.py reads both); empty → None."""
    out = []
    for b in blocks(text, "ref", "label"):
        if b.closed:
            out.append((b.end, b.inner.strip() or None))
    return out


def label_at(ref_list: list[tuple[int, str | None]], offset: int) -> str | None:
    """The label of the last `<ref>` closed before `offset` (a ref labels every box after it)."""
    label = None
    for end, lab in ref_list:
        if end > offset:
            break
        label = lab
    return label


def coords(inner: str) -> list[tuple[str, float | int]]:
    """[('x', 12), ('y', 40), ...] in order of appearance."""
    return [(m.group(1), number(m.group(2))) for m in COORD_RE.finditer(inner)]


def xy_pairs(items: list[tuple[str, float | int]]) -> tuple[list[tuple[float, float]], int]:
    """Consecutive (x, y) pairs; returns the pairs and how many coordinates did not pair up."""
    pairs: list[tuple[float, float]] = []
    stray = 0
    i = 0
    while i < len(items):
        if items[i][0] == "x" and i + 1 < len(items) and items[i + 1][0] == "y":
            pairs.append((items[i][1], items[i + 1][1]))
            i += 2
        else:
            stray += 1
            i += 1
    return pairs, stray
