"""The cache-aware baseline of bench/fleet_sim.py: what the Kubernetes inference routers ship.

Modelled on the Gateway API Inference Extension's endpoint picker (EPP) with the default profile
llm-d and the EPP ship (pkg/epp/scheduling/framework/plugins/multi/prefix/plugin.go, scorer/queue.go,
saturationdetector/config.go):

- an approximate prefix index per backend: the prompt's blocks recorded against the backend a request
  was sent to, an LRU per backend (the EPP hashes 64-character blocks, each chained to the one before,
  so a match of block i means blocks 0..i match too: a prefix tree). Here a block is one of the
  simulator's prefix segments (system prompt, image, each earlier turn) with its exact token count, and
  the index's capacity equals the backend's real cache: a generous approximation.
- a load threshold (the saturation detector's queue depth, 5 waiting requests by default): backends at
  or over it are filtered out while any backend is under it (the EPP's low-queue filter; SGLang's
  cache-aware router switches to shortest queue on imbalance the same way).
- weighted scorers, max-score picker, ties at random: prefix-cache-scorer 3 (matched share of the
  prompt), queue-scorer 2 (min-max normalized waiting requests, fewer is better),
  kv-cache-utilization-scorer 2 (1 - the share of the backend's KV cells in use).
- sends at once: the model server queues what finds no free slot (no queue in the router).
- optionally sheds (the EPP's flow control with the saturation detector, requests marked sheddable):
  when every backend is saturated (waiting queue over the threshold, or KV use at or over 0.8) a new
  request is refused at once (429).
"""

from __future__ import annotations

import random
from collections import OrderedDict
from typing import Protocol

PREFIX_WEIGHT, QUEUE_WEIGHT, KV_WEIGHT = 3.0, 2.0, 2.0  # the default EndpointPickerConfig of llm-d / the EPP
QUEUE_THRESHOLD = 5  # saturationdetector.DefaultQueueDepthThreshold
KV_THRESHOLD = 0.8  # saturationdetector.DefaultKVCacheUtilThreshold
CONTEXT_PER_SLOT = 4096  # KV cells per llama-server slot (-c 16384 -np 4): what KV utilization is measured in


class SimNode(Protocol):
    """What the baseline reads of a simulated llama-server (fleet_sim.Node)."""

    index: int
    slots: int
    busy: int
    kv_tokens: int

    @property
    def waiting(self) -> int: ...


class BlockIndex:
    """The router's guess of one backend's prefix cache: an LRU of prompt blocks (prefix id -> tokens)."""

    def __init__(self, capacity_tokens: int) -> None:
        self.capacity = capacity_tokens
        self.blocks: OrderedDict[object, int] = OrderedDict()
        self.size = 0

    def match(self, prefixes: list[tuple[object, int]]) -> int:
        """Tokens of the longest indexed prefix (the chain stops at the first block it does not hold)."""
        matched = 0
        for pid, tokens in prefixes:
            if pid not in self.blocks:
                break
            matched = tokens
        return matched

    def add(self, prefixes: list[tuple[object, int]]) -> None:
        previous = 0
        for pid, tokens in prefixes:
            if pid in self.blocks:
                self.blocks.move_to_end(pid)
            else:
                self.blocks[pid] = tokens - previous
                self.size += tokens - previous
            previous = tokens
        while self.size > self.capacity and self.blocks:
            _, tokens = self.blocks.popitem(last=False)
            self.size -= tokens


class CacheAware:
    def __init__(self, nodes: int, capacity_tokens: int, seed: int, shed: bool = False) -> None:
        self.index = [BlockIndex(capacity_tokens) for _ in range(nodes)]
        self.rng = random.Random(seed)
        self.shed = shed

    @staticmethod
    def kv_use(node: SimNode) -> float:
        return node.kv_tokens / (node.slots * CONTEXT_PER_SLOT)

    def saturated(self, nodes: list[SimNode]) -> bool:
        """The saturation detector: no backend with room (queue under the threshold and KV under 0.8)."""
        return all(n.waiting > QUEUE_THRESHOLD or self.kv_use(n) >= KV_THRESHOLD for n in nodes)

    def pick(self, nodes: list[SimNode], prefixes: list[tuple[object, int]]) -> SimNode | None:
        """The backend for a request (its blocks recorded there), or None: shed (429)."""
        if self.shed and self.saturated(nodes):
            return None
        candidates = [n for n in nodes if n.waiting < QUEUE_THRESHOLD] or list(nodes)
        prompt = prefixes[-1][1]
        queues = [n.waiting for n in candidates]
        low, high = min(queues), max(queues)
        best: list[SimNode] = []
        top = -1.0
        for n, q in zip(candidates, queues, strict=True):
            score = (PREFIX_WEIGHT * self.index[n.index].match(prefixes) / prompt
                     + QUEUE_WEIGHT * ((high - q) / (high - low) if high > low else 1.0)
                     + KV_WEIGHT * (1.0 - min(1.0, self.kv_use(n))))
            if score > top + 1e-12:
                best, top = [n], score
            elif abs(score - top) <= 1e-12:
                best.append(n)
        node = best[0] if len(best) == 1 else self.rng.choice(best)
        self.index[node.index].add(prefixes)
        return node
