"""The plug-in shapes of a pick (the Gateway API Inference Extension scheduler's filter -> score -> pick).

A pick first builds one `Cycle`: the facts every plug-in shares, computed once (the fleet this request
may use, its load, the request's prefix holder). Then the profile's filters drop backends that cannot
take the request, its scorers rate the rest in [0, 1] (weighted, summed) and its picker chooses.
Plug-ins only read: reserving the slot, counting and queueing belong to the balancer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from vlgate.backends import Backend
from vlgate.gateway.routing.affinity import Affinity


@dataclass(slots=True)
class Cycle:
    affinity: Affinity | None
    exclude: frozenset[Backend]
    fleet: list[Backend]  # READY and not excluded, in this pick's order (ties go to the earliest)
    load: int  # busy slots over the fleet (other gateway replicas' work included)
    capacity: int  # slots over the fleet
    holder: Backend | None  # the fleet's backend that last served one of the request's keys (may be full)
    held: Mapping[Backend, int] = field(default_factory=dict)  # prefix keys each backend holds (routing/holders.py)


@dataclass(slots=True)
class Pick:
    """A pick's outcome: the backend (None: no candidate) and what the queue's wait rule needs to know."""

    backend: Backend | None
    holder: Backend | None
    load: int
    capacity: int
    affinity_hit: bool  # the holder won over the backend with the most free slots


class Filter(Protocol):
    def filter(self, cycle: Cycle, candidates: list[Backend]) -> list[Backend]:
        """The candidates that can take the request, in the same order."""
        ...


class Scorer(Protocol):
    def score(self, cycle: Cycle, candidates: list[Backend]) -> list[float]:
        """One score in [0, 1] per candidate (higher is better)."""
        ...


class Picker(Protocol):
    def pick(self, cycle: Cycle, candidates: list[Backend], scores: list[float]) -> Backend:
        """One of the candidates (never called with none); `scores` are the weighted sums."""
        ...

