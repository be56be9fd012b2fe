"""Balancing quality in a simulated fleet (virtual time, deterministic): does slot + prefix affinity beat
what users would otherwise run?

    python bench/fleet_sim.py                      # loads 50/70/90%, every policy, markdown tables
    python bench/fleet_sim.py --loads 0.9 --backends 4 --slots 4 --seconds 1800 --seeds 1,2,3,4,5
    python bench/fleet_sim.py --quick --markdown PATH   # one seed, 600 s simulated; a markdown section
    python bench/fleet_sim.py --generic            # vlgate rows through the generic plug-in path: same tables

Fake llama-servers with N slots each: prefill time proportional to the prompt tokens NOT in that
backend's prefix cache (an LRU of recent prefixes, image hashes included), decode at a fixed rate per
slot, log-normal answer lengths, multi-turn conversations sharing system prompts, repeated images.
The `vlgate` policies run the gateway's real Balancer in virtual time (try_acquire / enqueue / release:
the prefix holder within bounded load, a full one waited for while the fleet is busy, else most free
slots); the others are what users run instead (nginx round robin, random, least connections): the
same scheduler with their profiles (routing/plugins/profile.py), sending at once and letting
llama-server queue (defer) on its own.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import itertools
import math
import random
import statistics
import sys
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import emit, machine

from vlgate.backends import Backend, BackendState
from vlgate.gateway.routing.balancer import Balancer
from vlgate.gateway.routing.plugins.profile import DEFAULT, PROFILES
from vlgate.gateway.routing.scheduler import make_scheduler

PREFILL_TOK_S = 3000.0
DECODE_TOK_S = 40.0
SYSTEM_TOKENS = 600
IMAGE_TOKENS = 1024
CACHE_TOKENS = 150_000  # per backend: KV of recent prompts (llama-server's slots + prompt cache)


@dataclass
class Request:
    conv: int
    turn: int
    arrival: float
    prefixes: list[tuple[object, int]]  # (prefix id, cumulative tokens), shortest first
    answer_tokens: int
    affinity: tuple[object, ...]
    image: object | None
    start: float = 0.0
    first_token: float = 0.0
    backend: int = -1
    cached: int = 0
    follow_up_local: bool | None = None
    image_local: bool | None = None

    @property
    def prompt_tokens(self) -> int:
        return self.prefixes[-1][1]


class PrefixCache:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.entries: OrderedDict[object, int] = OrderedDict()
        self.size = 0

    def cached(self, prefixes: list[tuple[object, int]]) -> int:
        best = 0
        for pid, tokens in prefixes:
            if pid in self.entries:
                best = tokens
        return best

    def holds(self, pid: object) -> bool:
        return pid in self.entries

    def add(self, prefixes: list[tuple[object, int]]) -> None:
        for pid, tokens in prefixes:
            if pid in self.entries:
                self.entries.move_to_end(pid)
                continue
            # an entry's cost is its own segment (the chain shares the rest)
            self.entries[pid] = tokens
            self.size += tokens
        while self.size > self.capacity and self.entries:
            _, tokens = self.entries.popitem(last=False)
            self.size -= tokens


@dataclass
class Node:
    index: int
    slots: int
    cache: PrefixCache
    busy: int = 0
    queue: deque[Request] = field(default_factory=deque)
    served: int = 0


class Workload:
    """Conversations: shared system prompts, some with an image from a pool of repeated images."""

    def __init__(self, seed: int, systems: int = 8, images: int = 150) -> None:
        self.rng = random.Random(seed)
        self.systems = systems
        self.images = images
        self.ids = itertools.count()

    def answer(self) -> int:
        return max(8, min(1000, int(self.rng.lognormvariate(math.log(120), 0.8))))

    def conversation(self, conv: int) -> tuple[list[object], int, object | None, int]:
        system = ("sys", self.rng.randrange(self.systems))
        # a Zipf-ish pool: some images come back often (a product photo, a screenshot many people ask about)
        image = ("img", int(self.images * self.rng.random() ** 2)) if self.rng.random() < 0.6 else None
        turns = 1 + min(7, int(self.rng.expovariate(1 / 2.0)))
        return [system, image], turns, image, self.rng.randint(20, 120)


def service_estimate(w: Workload) -> float:
    """Mean slot time of a request with nothing cached (defines 100% load)."""
    rng_state = w.rng.getstate()
    total = 0.0
    for _ in range(2000):
        _, _, image, user = w.conversation(0)
        prompt = SYSTEM_TOKENS + (IMAGE_TOKENS if image else 0) + user
        total += prompt / PREFILL_TOK_S + w.answer() / DECODE_TOK_S
    w.rng.setstate(rng_state)
    return total / 2000


def make_requests(w: Workload, rate_conv: float, seconds: float) -> list[Request]:
    """Every request of every conversation, with arrival times (turns follow answers + think time)."""
    out: list[Request] = []
    t = 0.0
    conv = 0
    while t < seconds:
        t += w.rng.expovariate(rate_conv)
        conv += 1
        (system, _), turns, image, user = w.conversation(conv)
        chain: list[tuple[object, int]] = [(system, SYSTEM_TOKENS)]
        if image is not None:
            chain.append(((system, image), SYSTEM_TOKENS + IMAGE_TOKENS))
        arrival = t
        for turn in range(turns):
            tokens = chain[-1][1] + user
            chain = chain + [(("conv", conv, turn, "q"), tokens)]
            answer = w.answer()
            # gateway/affinity.py: the conversation (system + first user turn + images), then system + image
            affinity = (hash((system, image, conv)),) + ((hash((system, image)),) if image is not None else ())
            out.append(Request(conv, turn, arrival, list(chain), answer, affinity, image))
            chain = chain + [(("conv", conv, turn, "a"), tokens + answer)]
            # the next turn comes after this answer (estimated) plus think time
            arrival += (tokens / PREFILL_TOK_S + answer / DECODE_TOK_S) + w.rng.expovariate(1 / 8.0)
            user = w.rng.randint(10, 80)
    out.sort(key=lambda r: r.arrival)
    return out


class Sim:
    def __init__(self, policy: str, nodes: int, slots: int, seed: int, generic: bool = False) -> None:
        self.policy = policy
        self.nodes = [Node(i, slots, PrefixCache(CACHE_TOKENS)) for i in range(nodes)]
        self.events: list[tuple[float, int, str, object]] = []
        self.seq = itertools.count()
        self.done: list[Request] = []
        self.backends = [Backend(url=f"http://sim{i}", name=f"sim{i}", slots=slots) for i in range(nodes)]
        for b in self.backends:
            b.set_state(BackendState.READY)
        self.now = 0.0
        self.balancer = Balancer(self.backends, clock=lambda: self.now)
        if generic:  # the default profile's plug-ins one by one instead of its fused fast path
            self.balancer.scheduler = make_scheduler(DEFAULT, self.balancer.tuning, self.balancer.holders, fused=False)
        self.loop = asyncio.new_event_loop()  # futures only (never run): Balancer.enqueue resolves them
        self.waiting: dict[asyncio.Future[Backend], Request] = {}
        # the baselines: the same scheduler, their profile; `in_flight` counts what each proxy connection
        # holds open (running + deferred by llama-server), all a least-connections proxy can see
        self.baseline = (None if policy.startswith("vlgate")
                         else make_scheduler(PROFILES[policy], rng=random.Random(seed)))

    def push(self, t: float, kind: str, obj: object) -> None:
        heapq.heappush(self.events, (t, next(self.seq), kind, obj))

    # -- policies ------------------------------------------------------------------------------
    def choose(self) -> Node:
        """The baselines: send at once; llama-server queues (defers) what finds no free slot."""
        assert self.baseline is not None
        backend = self.baseline.pick(self.backends).backend
        assert backend is not None  # no filters: every READY backend is a candidate
        backend.in_flight += 1
        return self.nodes[self.backends.index(backend)]

    def affinity(self, req: Request) -> tuple[object, ...] | None:
        return req.affinity if self.policy == "vlgate" else None

    def start(self, node: Node, req: Request, now: float) -> None:
        node.busy += 1
        node.served += 1
        req.backend = node.index
        req.start = now
        req.cached = node.cache.cached(req.prefixes)
        # locality counts only where some backend still holds the prefix (an evicted one can't be found)
        if req.turn > 0 and any(n.cache.holds(req.prefixes[-2][0]) for n in self.nodes):
            req.follow_up_local = node.cache.holds(req.prefixes[-2][0])  # the previous answer's prefix
        if (req.image is not None and req.turn == 0
                and any(n.cache.holds(req.prefixes[1][0]) for n in self.nodes)):
            req.image_local = node.cache.holds(req.prefixes[1][0])
        prefill = (req.prompt_tokens - req.cached) / PREFILL_TOK_S
        req.first_token = now + prefill
        node.cache.add(req.prefixes)
        self.push(req.first_token + req.answer_tokens / DECODE_TOK_S, "finish", (node, req))

    def arrive(self, req: Request, now: float) -> None:
        if not self.policy.startswith("vlgate"):
            node = self.choose()
            if node.busy < node.slots:
                self.start(node, req, now)
            else:
                node.queue.append(req)  # llama-server defers it
            return
        # Balancer.acquire, minus asyncio: at once, else queued (its wake timer as an event)
        affinity = self.affinity(req)
        backend = self.balancer.try_acquire(affinity)
        if backend is not None:
            self.start(self.nodes[self.backends.index(backend)], req, now)
            return
        future = self.loop.create_future()
        self.waiting[future] = req
        self.balancer.enqueue(future, affinity, frozenset())
        if affinity is not None:
            self.push(now + self.balancer.tuning.affinity_wait_s + 0.01, "wake", None)
        self.started(now)

    def started(self, now: float) -> None:
        """Start the queued requests the balancer handed a slot (it resolves their futures)."""
        for future in [f for f in self.waiting if f.done()]:
            self.start(self.nodes[self.backends.index(future.result())], self.waiting.pop(future), now)

    def finish(self, node: Node, req: Request, now: float) -> None:
        node.busy -= 1
        node.cache.add(req.prefixes + [(("conv", req.conv, req.turn, "a"), req.prompt_tokens + req.answer_tokens)])
        self.done.append(req)
        if self.policy.startswith("vlgate"):
            self.balancer.release(self.backends[node.index])
            self.started(now)
        else:
            self.backends[node.index].in_flight -= 1
            if node.queue:
                self.start(node, node.queue.popleft(), now)

    def run(self, requests: list[Request]) -> None:
        for r in requests:
            self.push(r.arrival, "arrive", r)
        while self.events:
            now, _, kind, obj = heapq.heappop(self.events)
            self.now = now
            if kind == "arrive":
                self.arrive(obj, now)  # type: ignore[arg-type]
            elif kind == "wake":
                self.balancer.wake()
                self.started(now)
            else:
                node, req = cast(tuple[Node, Request], obj)
                self.finish(node, req, now)
        self.loop.close()


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


def report(sim: Sim, seconds: float) -> dict[str, float]:
    done = [r for r in sim.done if r.arrival >= seconds * 0.1]  # skip the warm-up
    ttft = [r.first_token - r.arrival for r in done]
    prompt = sum(r.prompt_tokens for r in done)
    follow = [r.follow_up_local for r in done if r.follow_up_local is not None]
    images = [r.image_local for r in done if r.image_local is not None]
    served = [n.served for n in sim.nodes]
    return {
        "ttft_p50": pct(ttft, 0.5), "ttft_p99": pct(ttft, 0.99),
        "throughput": len(sim.done) / max(r.first_token for r in sim.done),
        "cache_hit": sum(r.cached for r in done) / prompt,
        "follow_local": sum(follow) / len(follow) if follow else float("nan"),
        "image_local": sum(images) / len(images) if images else float("nan"),
        "max_mean_load": max(served) / statistics.mean(served),
    }


POLICIES = ["vlgate", "round robin", "random", "least connections", "vlgate (no affinity)"]


def simulate(load: float, args: argparse.Namespace, seed: int, out: list[str]) -> dict[str, dict[str, float]]:
    """Every policy on the same requests at one load; a markdown table into `out`."""
    w = Workload(seed)
    per_request = service_estimate(w)
    capacity = args.backends * args.slots / per_request  # requests/s with nothing cached
    turns_per_conv = 1 + statistics.mean(min(7, int(random.Random(i).expovariate(1 / 2.0))) for i in range(5000))
    requests = make_requests(w, load * capacity / turns_per_conv, args.seconds)
    out += [f"### load {load:.0%} of capacity, seed {seed} ({load * capacity:.2f} req/s, {len(requests)} requests)",
            "", ("| policy | TTFT p50 (s) | TTFT p99 (s) | req/s | prefix-cache hit | follow-ups local "
                 "| repeated images local | max/mean load |"), "|---|---|---|---|---|---|---|---|"]
    rows = {}
    for policy in POLICIES:
        sim = Sim(policy, args.backends, args.slots, seed, args.generic)
        sim.run([Request(**{k: getattr(r, k) for k in ("conv", "turn", "arrival", "prefixes", "answer_tokens",
                                                         "affinity", "image")}) for r in requests])
        m = rows[policy] = report(sim, args.seconds)
        out.append(f"| {policy} | {m['ttft_p50']:.2f} | {m['ttft_p99']:.2f} | {m['throughput']:.2f} "
                   f"| {m['cache_hit']:.0%} | {m['follow_local']:.0%} | {m['image_local']:.0%} "
                   f"| {m['max_mean_load']:.2f} |")
    best = min((p for p in POLICIES if p != "vlgate"), key=lambda p: rows[p]["ttft_p99"])
    out += ["", (f"vlgate p99 TTFT / round robin: {rows['vlgate']['ttft_p99'] / rows['round robin']['ttft_p99']:.2f}; "
                 f"/ best other ({best}): {rows['vlgate']['ttft_p99'] / rows[best]['ttft_p99']:.2f}"), ""]
    return rows


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--loads", default="0.5,0.7,0.9")
    ap.add_argument("--backends", type=int, default=4)
    ap.add_argument("--slots", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=1200)
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--markdown", help="write the result as a markdown section here")
    ap.add_argument("--generic", action="store_true", help="vlgate rows without the fused fast path")
    ap.add_argument("--quick", action="store_true", help="one seed, 600 s simulated (a few seconds)")
    args = ap.parse_args()
    if args.quick:
        args.seeds, args.seconds = "1", 600.0
    out = [(f"## Balancing quality: fleet simulation (bench/fleet_sim.py), {args.backends} backends x {args.slots} "
            "slots"), "",
           (f"How measured: virtual time, {args.seconds:g} s per run (first 10% skipped), seeds {args.seeds}; prefill "
           f"{PREFILL_TOK_S:g} tok/s of uncached prompt, decode {DECODE_TOK_S:g} tok/s per slot, system prompt "
           f"{SYSTEM_TOKENS}, image {IMAGE_TOKENS} tokens, prefix cache {CACHE_TOKENS} tokens per backend; the vlgate "
           f"rows run the real gateway/balancer.py. Deterministic: the machine does not matter ({machine()})."), ""]
    for load in (float(x) for x in args.loads.split(",")):
        for seed in (int(x) for x in args.seeds.split(",")):
            simulate(load, args, seed, out)
    emit(out, args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
