"""Scorers: each rates the candidates in [0, 1]; a profile weighs and sums them."""

from __future__ import annotations

from vlgate.backends import Backend
from vlgate.gateway.routing.load import within_bound
from vlgate.gateway.routing.plugins.base import Cycle
from vlgate.gateway.routing.tuning import Tuning


class PrefixHolder:
    """1 for the backend whose KV cache holds the request's prefix, while within bounded load (else 0):
    a cached prefix saves its prefill, but one hot prefix must not pile onto one backend."""

    def __init__(self, tuning: Tuning) -> None:
        self.tuning = tuning  # read at each pick: a config reload changes affinity_load in place

    def score(self, cycle: Cycle, candidates: list[Backend]) -> list[float]:
        holder = cycle.holder
        if holder is None or not within_bound(holder, cycle.load, cycle.capacity, self.tuning.affinity_load):
            return [0.0] * len(candidates)
        return [1.0 if b is holder else 0.0 for b in candidates]


class FreeSlots:
    """Free slots relative to the most any candidate has: the emptiest backend starts decoding soonest."""

    def score(self, cycle: Cycle, candidates: list[Backend]) -> list[float]:
        frees = [max(0, b.free_slots) for b in candidates]
        top = max(frees, default=0)
        return [f / top if top else 0.0 for f in frees]


class FewestHeld:
    """Fewer prefix keys held scores higher: weighed only to break ties of free slots, it spreads new
    conversations evenly over the fleet, so fewer of them later find their holder full."""

    def score(self, cycle: Cycle, candidates: list[Backend]) -> list[float]:
        return [1.0 / (1 + cycle.held.get(b, 0)) for b in candidates]


class LeastConnections:
    """Fewer open requests scores higher (nginx's least_conn): the baseline that ignores slots and prefixes."""

    def score(self, cycle: Cycle, candidates: list[Backend]) -> list[float]:
        return [1.0 / (1 + max(0, b.in_flight)) for b in candidates]
