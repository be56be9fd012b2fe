"""The default profile (routing/plugins/profile.py DEFAULT) fused into one loop: the fast path.

Same picks as the generic scheduler running DEFAULT's plug-ins (free-slot filter; prefix holder within
bounded load, weight 2; free slots, weight 1; fewest prefixes held, a tie-break; max score, ties to the
rotation's earliest), proved by
tests/gateway/test_routing_plugins.py over many random fleet states (and bench/fleet_sim.py --generic
gives the same tables). Kept because the generic path costs far more than the ~1 µs per pick allowed:
bench/pick_bench.py, 16 backends x 4 slots, 2-core AMD EPYC VM, Python 3.11: the old fused
Balancer._pick (d426147) 4.1-4.3 µs; Balancer._pick now (this path + the wait rule) 3.2 µs; this path
alone 3.1 µs; the generic plug-ins 12.2-12.8 µs (+8 µs). A pick runs for every arriving request, and
again for each queued request on every freed slot.
"""

from __future__ import annotations

from vlgate.backends import Backend, BackendState
from vlgate.gateway.routing.affinity import Affinity
from vlgate.gateway.routing.holders import HolderTable
from vlgate.gateway.routing.load import within_bound
from vlgate.gateway.routing.plugins.base import Pick
from vlgate.gateway.routing.rotation import Rotation
from vlgate.gateway.routing.tuning import Tuning

_READY = BackendState.READY
_NONE_HELD: dict[Backend, int] = {}


class FusedDefault:
    def __init__(self, tuning: Tuning, holders: HolderTable | None = None) -> None:
        self.tuning = tuning
        self.holders = holders
        self.rotation = Rotation()

    def pick(self, backends: list[Backend], affinity: Affinity | None = None,
             exclude: frozenset[Backend] = frozenset()) -> Pick:
        best: Backend | None = None
        best_free = 0
        n = len(backends)
        start = self.rotation.start(n)
        load = capacity = 0
        held = self.holders.held if self.holders is not None else _NONE_HELD
        for i in range(n):
            b = backends[(start + i) % n]
            if b.state is not _READY or b in exclude:
                continue
            free = b.free_slots
            load += b.slots - free
            capacity += b.slots
            if free > best_free or (free == best_free and best is not None
                                     and held.get(b, 0) < held.get(best, 0)):
                best, best_free = b, free
        holder = self.holders.holder(affinity, exclude) if self.holders is not None and affinity else None
        if (holder is not None and holder is not best and holder.free_slots > 0
                and within_bound(holder, load, capacity, self.tuning.affinity_load)):
            return Pick(holder, holder, load, capacity, True)
        return Pick(best, holder, load, capacity, False)
