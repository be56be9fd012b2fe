"""The operator's affinity knobs, one mutable object: a config reload changes them in place and every
plug-in that reads them (the prefix scorer, the fused fast path, the holder wait) sees the new values."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Tuning:
    affinity_load: float = 1.5  # the prefix holder may carry up to this x the fleet's mean load (+1)
    affinity_wait_s: float = 5.0  # how long a request may queue for its full prefix holder
