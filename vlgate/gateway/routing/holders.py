"""Prefix holders: which backend last served each affinity key, so its KV cache holds that prefix.

An LRU of keys (a bounded memory for a gateway that sees endless conversations); a backend that leaves
READY forgets its keys (its cache is gone or unreachable). It also counts the keys each backend holds:
among backends with equally many free slots, a new conversation goes to the one holding the fewest, so
conversations spread evenly and fewer of them find their holder full later (routing/fused.py)."""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import ItemsView, Mapping

from vlgate.backends import Backend, BackendState
from vlgate.gateway.routing.affinity import Affinity


class HolderTable:
    def __init__(self, entries: int = 16384) -> None:
        self.entries = entries
        self._holders: OrderedDict[object, Backend] = OrderedDict()
        self._held: Counter[Backend] = Counter()

    @property
    def held(self) -> Mapping[Backend, int]:
        """How many keys each backend holds (absent: none)."""
        return self._held

    def __len__(self) -> int:
        return len(self._holders)

    def items(self) -> ItemsView[object, Backend]:
        return self._holders.items()

    def get(self, key: object) -> Backend | None:
        return self._holders.get(key)

    def holder(self, affinity: Affinity | None, exclude: frozenset[Backend]) -> Backend | None:
        """The ready backend that last served one of the request's keys (most specific key first).

        A full holder still counts (the request may wait for it); one not READY or excluded does not."""
        for key in affinity or ():
            b = self._holders.get(key)
            if b is not None and b.state is BackendState.READY and b not in exclude:
                return b
        return None

    def record(self, affinity: Affinity | None, backend: Backend) -> None:
        """`backend` now holds every key of the request (it is about to prefill that prompt)."""
        for key in affinity or ():
            before = self._holders.get(key)
            if before is not backend:
                if before is not None:
                    self._drop(before)
                self._held[backend] += 1
            self._holders[key] = backend
            self._holders.move_to_end(key)
        while len(self._holders) > self.entries:
            self._drop(self._holders.popitem(last=False)[1])

    def _drop(self, backend: Backend) -> None:
        self._held[backend] -= 1
        if self._held[backend] <= 0:
            del self._held[backend]

    def forget(self, backend: Backend) -> None:
        for key in [k for k, b in self._holders.items() if b is backend]:
            del self._holders[key]
        self._held.pop(backend, None)
