"""The scheduler: one pick = build the cycle, run the profile's filters, scorers and picker.

`make_scheduler` gives the default profile its fused fast path (routing/fused.py: same picks, a
fraction of the cost); every other profile runs this generic path."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Protocol

from vlgate.backends import Backend, BackendState
from vlgate.gateway.routing.affinity import Affinity
from vlgate.gateway.routing.fused import FusedDefault
from vlgate.gateway.routing.holders import HolderTable
from vlgate.gateway.routing.plugins.base import Cycle, Pick
from vlgate.gateway.routing.plugins.profile import DEFAULT, Profile, ProfileSpec, build
from vlgate.gateway.routing.rotation import Rotation
from vlgate.gateway.routing.tuning import Tuning


class Scheduler(Protocol):
    def pick(self, backends: list[Backend], affinity: Affinity | None = None,
             exclude: frozenset[Backend] = frozenset()) -> Pick:
        """Choose among `backends` (reserving nothing)."""
        ...


def most_free(candidates: list[Backend], held: Mapping[Backend, int]) -> Backend | None:
    """The first candidate with the most free slots, of those the fewest prefixes held: what an affinity
    hit is counted against (the metric)."""
    return max(candidates, key=lambda b: (b.free_slots, -held.get(b, 0)), default=None)  # the first of equals


class GenericScheduler:
    def __init__(self, profile: Profile, holders: HolderTable | None = None) -> None:
        self.profile = profile
        self.holders = holders
        self.rotation = Rotation()

    def cycle(self, backends: list[Backend], affinity: Affinity | None, exclude: frozenset[Backend]) -> Cycle:
        """The facts every plug-in of this pick shares."""
        if self.profile.spec.rotate and len(backends) > 1:
            start = self.rotation.start(len(backends))
            backends = backends[start:] + backends[:start]
        fleet = [b for b in backends if b.state is BackendState.READY and b not in exclude]
        capacity = sum(b.slots for b in fleet)
        load = capacity - sum(b.free_slots for b in fleet)
        holder = self.holders.holder(affinity, exclude) if self.holders is not None and affinity else None
        return Cycle(affinity, exclude, fleet, load, capacity, holder,
                     self.holders.held if self.holders is not None else {})

    def pick(self, backends: list[Backend], affinity: Affinity | None = None,
             exclude: frozenset[Backend] = frozenset()) -> Pick:
        cycle = self.cycle(backends, affinity, exclude)
        candidates = cycle.fleet
        for f in self.profile.filters:
            candidates = f.filter(cycle, candidates)
        if not candidates:
            return Pick(None, cycle.holder, cycle.load, cycle.capacity, False)
        totals = [0.0] * len(candidates)
        for scorer, weight in self.profile.scorers:
            for i, score in enumerate(scorer.score(cycle, candidates)):
                totals[i] += weight * score
        backend = self.profile.picker.pick(cycle, candidates, totals)
        hit = backend is cycle.holder and backend is not most_free(candidates, cycle.held)
        return Pick(backend, cycle.holder, cycle.load, cycle.capacity, hit)


def make_scheduler(spec: ProfileSpec = DEFAULT, tuning: Tuning | None = None, holders: HolderTable | None = None,
                   *, rng: random.Random | None = None, fused: bool = True) -> Scheduler:
    """The scheduler for a profile: the default one fused unless asked not to (tests compare the two);
    `rng` feeds a random picker (a seeded one: reproducible runs)."""
    tuning = tuning or Tuning()
    if fused and spec == DEFAULT:
        return FusedDefault(tuning, holders)
    return GenericScheduler(build(spec, tuning, rng), holders)
