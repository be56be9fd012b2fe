"""Profiles: a policy declared as data (plug-in names, weights) and built into plug-in instances.

Like the Inference Extension's EndpointPickerConfig scheduling profile: a new signal (queue depth, KV
use, image cost) is a new filter or scorer registered here and named in a profile, with no change to the
balancer. `DEFAULT` is vlgate's policy; the others are what users run instead (bench/fleet_sim.py).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from vlgate.gateway.routing.plugins.base import Filter, Picker, Scorer
from vlgate.gateway.routing.plugins.filters import FreeSlot
from vlgate.gateway.routing.plugins.pickers import MaxScore, Random, RoundRobin
from vlgate.gateway.routing.plugins.scorers import (
    FewestHeld,
    FreeSlots,
    LeastConnections,
    PrefixHolder,
)
from vlgate.gateway.routing.tuning import Tuning


@dataclass(frozen=True)
class ProfileSpec:
    name: str
    filters: tuple[str, ...] = ()
    scorers: tuple[tuple[str, float], ...] = ()  # (scorer, weight)
    picker: str = "max-score"
    # each pick starts the fleet one backend later, so equal scores spread round robin; a picker with
    # its own order (random) takes the fleet as configured
    rotate: bool = True


# the prefix holder (within bounded load) weighs more than all the other scorers together: when it can
# take the request it gets it; otherwise the most free slots win, and of those the one holding the fewest
# prefixes (its weight only breaks ties: free-slot scores differ by at least 1/slots). Unevenly spread
# conversations (4 x 2 slots: 4/5/1/6 of 16) meet a full holder more often on a quiet fleet
DEFAULT = ProfileSpec("vlgate", filters=("free-slot",),
                      scorers=(("prefix-holder", 2.0), ("free-slots", 1.0), ("fewest-held", 1e-6)))
ROUND_ROBIN = ProfileSpec("round robin", picker="round-robin", rotate=False)
RANDOM = ProfileSpec("random", picker="random", rotate=False)
LEAST_CONNECTIONS = ProfileSpec("least connections", scorers=(("least-connections", 1.0),))
PROFILES = {p.name: p for p in (DEFAULT, ROUND_ROBIN, RANDOM, LEAST_CONNECTIONS)}


@dataclass(frozen=True)
class Profile:
    spec: ProfileSpec
    filters: tuple[Filter, ...]
    scorers: tuple[tuple[Scorer, float], ...]
    picker: Picker


@dataclass(frozen=True)
class _Needs:
    """What a plug-in factory may take: the shared knobs and a random source."""

    tuning: Tuning
    rng: random.Random


FILTERS: dict[str, Callable[[_Needs], Filter]] = {"free-slot": lambda _: FreeSlot()}
SCORERS: dict[str, Callable[[_Needs], Scorer]] = {
    "prefix-holder": lambda n: PrefixHolder(n.tuning),
    "free-slots": lambda _: FreeSlots(),
    "fewest-held": lambda _: FewestHeld(),
    "least-connections": lambda _: LeastConnections(),
}
PICKERS: dict[str, Callable[[_Needs], Picker]] = {
    "max-score": lambda _: MaxScore(),
    "round-robin": lambda _: RoundRobin(),
    "random": lambda n: Random(n.rng),
}


T = TypeVar("T")


def _make(registry: dict[str, Callable[[_Needs], T]], kind: str, name: str, needs: _Needs) -> T:
    if name not in registry:
        raise ValueError(f"unknown {kind} {name!r} (known: {', '.join(sorted(registry))})")
    return registry[name](needs)


def build(spec: ProfileSpec, tuning: Tuning | None = None, rng: random.Random | None = None) -> Profile:
    """The plug-ins a profile names; scorer weights must be positive."""
    needs = _Needs(tuning or Tuning(), rng or random.Random())
    for name, weight in spec.scorers:
        if not weight > 0:
            raise ValueError(f"scorer {name!r}: weight must be positive, not {weight!r}")
    return Profile(spec,
                   tuple(_make(FILTERS, "filter", f, needs) for f in spec.filters),
                   tuple((_make(SCORERS, "scorer", s, needs), w) for s, w in spec.scorers),
                   _make(PICKERS, "picker", spec.picker, needs))
