"""Waiting for a full prefix holder: a queueing decision, made after the pick (bench/fleet_sim.py measured it).

Waiting leaves a free slot elsewhere idle unless the fleet is busy enough that another request soon
takes it: only then is the prefill the cached prefix saves worth the wait, and only for a while
(`affinity_wait_s`), not behind a long line (twice the holder's slots), and not while some backend
sits entirely idle (one just joined or restarted: the smoothed demand lags) unless it was busy a
moment ago: then its own conversations are on their way back to it (a client reading an answer and
sending the next turn), and a request that moves there loses its prefix and takes their slot.
"""

from __future__ import annotations

from collections.abc import Callable

from vlgate.backends import Backend
from vlgate.gateway.routing.load import within_bound
from vlgate.gateway.routing.plugins.base import Pick
from vlgate.gateway.routing.tuning import Tuning

# a full prefix holder is waited for only while requests (running + queued) fill this share of the slots
# on average: below it the slot the request leaves free elsewhere stays idle and the wait is pure added
# latency (bench/fleet_sim.py, 4x4 slots: 70% load = 0.66 busy with affinity, 90% = 0.82; at 0.6-0.7 the
# 70% load's p99 loses to least connections, at 0.8 the 90% load's locality falls under 90%)
WAIT_ABOVE_UTILIZATION = 0.72
# an entirely idle backend whose last request ended less than this ago is not left idle by waiting: its own
# conversations' next turns are coming (4 real llama-servers x 2 slots, bench/prefix_cache_real.py, turns back
# to back: most lost prefixes were requests moved to a backend whose two slots had just freed)
IDLE_GRACE_S = 0.25


def waits_for_holder(pick: Pick, tuning: Tuning, utilization: float, waited_s: float | None,
                     ahead: dict[Backend, int] | None, idle_s: Callable[[Backend], float] | None = None) -> bool:
    """Whether the request stays queued for its full holder instead of taking `pick.backend`.

    `waited_s`: how long it has queued (None: a new request); `ahead` counts, per holder, the queued
    requests before this one that chose to wait for it (a request that waits joins that line); `idle_s`:
    how long a backend has been without requests (inf: never served since it became ready)."""
    holder, best = pick.holder, pick.backend
    if (holder is None or holder is best or holder.free_slots > 0
            or not within_bound(holder, pick.load, pick.capacity, tuning.affinity_load)):
        return False
    queued = ahead.get(holder, 0) if ahead else 0
    if best is None or (utilization >= WAIT_ABOVE_UTILIZATION and (waited_s or 0.0) < tuning.affinity_wait_s
                        and queued < 2 * holder.slots
                        and (best.free_slots < best.slots or (idle_s is not None and idle_s(best) < IDLE_GRACE_S))):
        if ahead is not None and best is not None:
            ahead[holder] = queued + 1
        return True
    return False
