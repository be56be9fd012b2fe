"""Filters: drop the backends that cannot take the request now.

READY and not excluded (a retry's tried backends) are not filters: they define the fleet the load is
measured over (`Cycle.fleet`), full backends included, since a full backend is load."""

from __future__ import annotations

from vlgate.backends import Backend
from vlgate.gateway.routing.plugins.base import Cycle


class FreeSlot:
    """A backend with no free slot would make llama-server queue the request unseen: it waits in ours."""

    def filter(self, cycle: Cycle, candidates: list[Backend]) -> list[Backend]:
        return [b for b in candidates if b.free_slots > 0]
