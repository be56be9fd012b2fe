"""Bounded load (bounded-load consistent hashing's rule): the prefix holder keeps a request only while its
load stays within `factor` x the fleet's mean load, scaled to its slots (+1, so an idle fleet still
gives the holder one request). Without the bound one hot conversation or image piles onto one backend."""

from __future__ import annotations

from vlgate.backends import Backend


def within_bound(holder: Backend, load: int, capacity: int, factor: float) -> bool:
    """Whether one more request keeps `holder` within the bound (`load`/`capacity`: busy/all slots of the fleet)."""
    bound = factor * (load * holder.slots / capacity + 1)
    return holder.slots - holder.free_slots + 1 <= bound
