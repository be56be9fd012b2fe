"""Bounded load (bounded-load consistent hashing's rule): the prefix holder keeps a request only while its
load stays within `factor` x the fleet's mean load, scaled to its slots (+1, so an idle fleet still
gives the holder one request). Without the bound one hot conversation or image piles onto one backend.

The holder may always run two requests: with two-slot backends the bound of a quiet fleet (1.5 x (1/4 + 1)
= 1.9 while only the holder is busy) sent a conversation away from the free slot next to its prefix, and
the prefix was lost, though a second sequence costs a backend little (4 real llama-servers x 2 slots,
bench/prefix_cache_real.py, 0-2 s between turns: 4 of 6 lost prefixes)."""

from __future__ import annotations

from vlgate.backends import Backend

MIN_BOUND = 2  # requests the holder may run whatever the fleet's load


def within_bound(holder: Backend, load: int, capacity: int, factor: float) -> bool:
    """Whether one more request keeps `holder` within the bound (`load`/`capacity`: busy/all slots of the fleet)."""
    bound = factor * (load * holder.slots / capacity + 1)
    return holder.slots - holder.free_slots + 1 <= max(bound, MIN_BOUND)
