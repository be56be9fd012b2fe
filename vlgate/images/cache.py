"""Normalized images by content hash: LRU bounded by entry count and by bytes (multi-turn chats resend images)."""

from __future__ import annotations

from collections import OrderedDict

from vlgate.images.pipeline import Normalized


class NormalizedCache:
    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, Normalized] = OrderedDict()
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str) -> Normalized | None:
        item = self._items.get(key)
        if item is None:
            self.misses += 1
            return None
        self._items.move_to_end(key)
        self.hits += 1
        return item

    def put(self, key: str, value: Normalized) -> None:
        size = len(value.data_url)
        if self.max_entries <= 0 or size > self.max_bytes:
            return
        old = self._items.pop(key, None)
        if old is not None:
            self.bytes -= len(old.data_url)
        self._items[key] = value
        self.bytes += size
        while len(self._items) > self.max_entries or self.bytes > self.max_bytes:
            _, evicted = self._items.popitem(last=False)
            self.bytes -= len(evicted.data_url)
