"""Pickers: choose one candidate from the weighted scores."""

from __future__ import annotations

import itertools
import random

from vlgate.backends import Backend
from vlgate.gateway.routing.plugins.base import Cycle


class MaxScore:
    """The highest score; a tie goes to the earliest candidate (the scheduler's rotating order spreads ties)."""

    def pick(self, cycle: Cycle, candidates: list[Backend], scores: list[float]) -> Backend:
        best = 0
        for i in range(1, len(scores)):
            if scores[i] > scores[best]:
                best = i
        return candidates[best]


class RoundRobin:
    """Each candidate in turn, scores ignored (nginx's default)."""

    def __init__(self) -> None:
        self._turn = itertools.count()

    def pick(self, cycle: Cycle, candidates: list[Backend], scores: list[float]) -> Backend:
        return candidates[next(self._turn) % len(candidates)]


class Random:
    """Uniformly at random, scores ignored (the load balancer with no state at all)."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self.rng = rng or random.Random()

    def pick(self, cycle: Cycle, candidates: list[Backend], scores: list[float]) -> Backend:
        return self.rng.choice(candidates)
