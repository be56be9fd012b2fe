"""The order a pick sees the fleet in: one backend later each time, so ties spread round robin instead
of always landing on the first backend listed."""

from __future__ import annotations

import itertools


class Rotation:
    def __init__(self) -> None:
        self._turn = itertools.count()

    def start(self, n: int) -> int:
        """Where this pick starts among `n` backends (the count moves only when there is a choice)."""
        return next(self._turn) % n if n > 1 else 0
