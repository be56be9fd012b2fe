"""Balancing quality in a simulated fleet (virtual time, deterministic): does slot + prefix affinity beat
what users would otherwise run, below, at and past capacity?

    python bench/fleet_sim.py                      # loads 50/70/90/100/120%, every policy, markdown tables
    python bench/fleet_sim.py --loads 1.0,1.2 --backends 4 --slots 4 --seconds 1800 --seeds 1,2,3,4,5,6,7,8
    python bench/fleet_sim.py --quick --markdown PATH   # one seed, 1200 s simulated; a markdown section
    python bench/fleet_sim.py --generic            # vlgate rows through the generic plug-in path: same tables

Fake llama-servers with N slots each: prefill time proportional to the prompt tokens NOT in that
backend's prefix cache (an LRU of recent prefixes, image hashes included), decode at a fixed rate per
slot, log-normal answer lengths, multi-turn conversations sharing system prompts, repeated images.
The `vlgate` policies run the gateway's real Balancer in virtual time (try_acquire / refusal / enqueue /
expire / release: the prefix holder within bounded load, a full one waited for while the fleet is busy,
else most free slots; the bounded queue with its 429 and 503 + Retry-After); the others are what users run
instead: nginx round robin, random, least connections (the same scheduler with their profiles,
routing/plugins/profile.py) and the Kubernetes inference routers' cache-aware scheduler with and without
its shedding (bench/sim_policies.py), all sending at once and letting llama-server queue (defer) on its
own. The ideal row bounds what any routing could reach: every backend reads one cache of the fleet's size.
Reported per policy: goodput (answers whose first token came within `--slo`), time to first token (mean,
p50, p99), requests refused (status, Retry-After), prefix-cache hits and locality.
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
from sim_policies import CacheAware, SimNode

from vlgate.backends import Backend, BackendState
from vlgate.gateway.routing.balancer import Balancer, _Waiter
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
    refused: int = 0  # the HTTP status of a refusal (429, 503), 0 when served
    retry_after: str | None = None
    refused_after: float = 0.0  # how long the client waited for its refusal

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
    kv_tokens: int = 0  # context of the running requests (the cache-aware baseline's KV utilization)

    @property
    def waiting(self) -> int:
        """Requests llama-server defers (no free slot): its queue metric."""
        return len(self.queue)


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
        self.refused: list[Request] = []
        self.backends = [Backend(url=f"http://sim{i}", name=f"sim{i}", slots=slots) for i in range(nodes)]
        for b in self.backends:
            b.set_state(BackendState.READY)
        self.now = 0.0
        self.vlgate = policy.startswith(("vlgate", "ideal"))  # the real balancer
        if policy.startswith("ideal"):  # a bound on any routing: every backend reads one cache of the fleet's size
            shared = PrefixCache(CACHE_TOKENS * nodes)
            for node in self.nodes:
                node.cache = shared
        self.balancer = Balancer(self.backends, clock=lambda: self.now)
        if generic:  # the default profile's plug-ins one by one instead of its fused fast path
            self.balancer.scheduler = make_scheduler(DEFAULT, self.balancer.tuning, self.balancer.holders, fused=False)
        self.loop = asyncio.new_event_loop()  # futures only (never run): Balancer.enqueue resolves them
        self.waiting: dict[asyncio.Future[Backend], tuple[Request, object]] = {}
        # the baselines: the same scheduler, their profile; `in_flight` counts what each proxy connection
        # holds open (running + deferred by llama-server), all a least-connections proxy can see
        self.baseline = (make_scheduler(PROFILES[policy], rng=random.Random(seed)) if policy in PROFILES
                         and not self.vlgate else None)
        # the Kubernetes routers' cache-aware scheduler (bench/sim_policies.py), with or without shedding
        self.cache_aware = (CacheAware(nodes, CACHE_TOKENS, seed, shed="shed" in policy)
                            if policy.startswith("cache-aware") else None)

    def push(self, t: float, kind: str, obj: object) -> None:
        heapq.heappush(self.events, (t, next(self.seq), kind, obj))

    # -- policies ------------------------------------------------------------------------------
    def choose(self) -> Node:
        """The proxy baselines: send at once; llama-server queues (defers) what finds no free slot."""
        assert self.baseline is not None
        backend = self.baseline.pick(self.backends).backend
        assert backend is not None  # no filters: every READY backend is a candidate
        return self.nodes[self.backends.index(backend)]

    def affinity(self, req: Request) -> tuple[object, ...] | None:
        return req.affinity if self.policy == "vlgate" else None

    def start(self, node: Node, req: Request, now: float) -> None:
        node.busy += 1
        node.served += 1
        node.kv_tokens += req.prompt_tokens + req.answer_tokens
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

    def send(self, node: Node, req: Request, now: float) -> None:
        """A proxy baseline's request reaches llama-server: a free slot, else its deferred queue."""
        self.backends[node.index].in_flight += 1
        if node.busy < node.slots:
            self.start(node, req, now)
        else:
            node.queue.append(req)  # llama-server defers it

    def refuse(self, req: Request, status: int, retry_after: str | None, now: float) -> None:
        req.refused, req.retry_after, req.refused_after = status, retry_after, now - req.arrival
        self.refused.append(req)

    def arrive(self, req: Request, now: float) -> None:
        if self.cache_aware is not None:
            node = self.cache_aware.pick(cast(list[SimNode], self.nodes), req.prefixes)
            if node is None:  # the saturation detector sheds it (the EPP answers 429)
                self.refuse(req, 429, None, now)
            else:
                self.send(cast(Node, node), req, now)
            return
        if not self.vlgate:
            self.send(self.choose(), req, now)
            return
        # Balancer.acquire, minus asyncio: at once, else refused or queued (its timers as events)
        affinity = self.affinity(req)
        backend = self.balancer.try_acquire(affinity)
        if backend is not None:
            self.start(self.nodes[self.backends.index(backend)], req, now)
            return
        refused = self.balancer.refusal()
        if refused is not None:
            self.refuse(req, refused.status, (refused.headers or {}).get("Retry-After"), now)
            return
        future = self.loop.create_future()
        self.waiting[future] = (req, self.balancer.enqueue(future, affinity, frozenset()))
        if affinity is not None:
            self.push(now + self.balancer.tuning.affinity_wait_s + 0.01, "wake", None)
        self.push(now + self.balancer.queue_timeout_s, "timeout", future)
        self.started(now)

    def started(self, now: float) -> None:
        """Start the queued requests the balancer handed a slot (it resolves their futures)."""
        for future in [f for f in self.waiting if f.done()]:
            req, _ = self.waiting.pop(future)
            self.start(self.nodes[self.backends.index(future.result())], req, now)

    def timeout(self, future: asyncio.Future[Backend], now: float) -> None:
        """The queue deadline: a request still waiting gets the balancer's 503 (Balancer.acquire)."""
        if future not in self.waiting:
            return
        req, waiter = self.waiting.pop(future)
        error = self.balancer.expire(cast(_Waiter, waiter))
        self.refuse(req, error.status, (error.headers or {}).get("Retry-After"), now)

    def finish(self, node: Node, req: Request, now: float) -> None:
        node.busy -= 1
        node.kv_tokens -= req.prompt_tokens + req.answer_tokens
        node.cache.add(req.prefixes + [(("conv", req.conv, req.turn, "a"), req.prompt_tokens + req.answer_tokens)])
        self.done.append(req)
        if self.vlgate:
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
                self.arrive(cast(Request, obj), now)
            elif kind == "wake":
                self.balancer.wake()
                self.started(now)
            elif kind == "timeout":
                self.timeout(cast("asyncio.Future[Backend]", obj), now)
            else:
                node, req = cast(tuple[Node, Request], obj)
                self.finish(node, req, now)
        self.loop.close()


IDEAL = "ideal (one shared cache)"
Results = dict[float, list[dict[str, dict[str, float]]]]  # load -> one run per seed -> policy -> metrics


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


def report(sim: Sim, seconds: float, slo: float) -> dict[str, float]:
    """Requests that arrived after the warm-up (the first 10%): served and refused."""
    start = seconds * 0.1
    done = [r for r in sim.done if r.arrival >= start]
    refused = [r for r in sim.refused if r.arrival >= start]
    ttft = [r.first_token - r.arrival for r in done]
    prompt = sum(r.prompt_tokens for r in done)
    follow = [r.follow_up_local for r in done if r.follow_up_local is not None]
    images = [r.image_local for r in done if r.image_local is not None]
    served = [n.served for n in sim.nodes]
    offered = len(done) + len(refused)
    good = sum(t <= slo for t in ttft)
    return {
        "ttft_mean": statistics.fmean(ttft) if ttft else float("nan"),
        "ttft_p50": pct(ttft, 0.5), "ttft_p99": pct(ttft, 0.99),
        "goodput": good / (seconds - start), "goodput_share": good / offered if offered else float("nan"),
        "shed": len(refused), "shed_share": len(refused) / offered if offered else 0.0,
        "shed_429": sum(r.refused == 429 for r in refused), "shed_503": sum(r.refused == 503 for r in refused),
        "shed_other": sum(r.refused not in (429, 503) for r in refused),
        "retry_after_max": max((float(r.retry_after) for r in refused if r.retry_after is not None), default=0.0),
        "retry_after_missing": sum(r.retry_after is None for r in refused),
        "refused_after_max": max((r.refused_after for r in refused), default=0.0),
        "first_refusal": min((r.arrival + r.refused_after for r in sim.refused), default=float("nan")),
        "cache_hit": sum(r.cached for r in done) / prompt,
        "follow_local": sum(follow) / len(follow) if follow else float("nan"),
        "image_local": sum(images) / len(images) if images else float("nan"),
        "max_mean_load": max(served) / statistics.mean(served),
    }


POLICIES = ["vlgate", "round robin", "random", "least connections", "cache-aware", "cache-aware, sheds",
            "vlgate (no affinity)", IDEAL]
OTHERS = [p for p in POLICIES if p not in ("vlgate", IDEAL)]  # what vlgate is compared with


def shed_cell(m: dict[str, float]) -> str:
    if not m["shed"]:
        return "0"
    codes = ", ".join(f"{m[k]:.0f}x {k[-3:]}" for k in ("shed_429", "shed_503") if m[k])
    return f"{m['shed_share']:.1%} ({codes})"


def simulate(load: float, args: argparse.Namespace, seed: int, out: list[str]) -> dict[str, dict[str, float]]:
    """Every policy on the same requests at one load; a markdown table into `out`."""
    w = Workload(seed)
    per_request = service_estimate(w)
    capacity = args.backends * args.slots / per_request  # requests/s with nothing cached
    turns_per_conv = 1 + statistics.mean(min(7, int(random.Random(i).expovariate(1 / 2.0))) for i in range(5000))
    requests = make_requests(w, load * capacity / turns_per_conv, args.seconds)
    out += [f"### load {load:.0%} of capacity, seed {seed} ({load * capacity:.2f} req/s, {len(requests)} requests)",
            "", (f"| policy | goodput (TTFT <= {args.slo:g} s) | TTFT mean (s) | TTFT p50 (s) | TTFT p99 (s) | shed "
                 "| prefix-cache hit | follow-ups local | repeated images local | max/mean load |"),
            "|---|---|---|---|---|---|---|---|---|---|"]
    rows = {}
    for policy in POLICIES:
        sim = Sim(policy, args.backends, args.slots, seed, args.generic)
        sim.run([Request(**{k: getattr(r, k) for k in ("conv", "turn", "arrival", "prefixes", "answer_tokens",
                                                         "affinity", "image")}) for r in requests])
        m = rows[policy] = report(sim, args.seconds, args.slo)
        out.append(f"| {policy} | {m['goodput']:.2f} req/s ({m['goodput_share']:.0%}) | {m['ttft_mean']:.2f} "
                   f"| {m['ttft_p50']:.2f} | {m['ttft_p99']:.2f} | {shed_cell(m)} "
                   f"| {m['cache_hit']:.0%} | {m['follow_local']:.0%} | {m['image_local']:.0%} "
                   f"| {m['max_mean_load']:.2f} |")
    ours = rows["vlgate"]
    best = min(OTHERS, key=lambda p: rows[p]["ttft_p99"])
    best_good = max(OTHERS, key=lambda p: rows[p]["goodput"])
    out += ["", (f"vlgate mean TTFT / round robin: {ours['ttft_mean'] / rows['round robin']['ttft_mean']:.2f}, "
                 f"/ cache-aware: {ours['ttft_mean'] / rows['cache-aware']['ttft_mean']:.2f}; "
                 f"p99 / round robin: {ours['ttft_p99'] / rows['round robin']['ttft_p99']:.2f}, "
                 f"/ best other ({best}): {ours['ttft_p99'] / rows[best]['ttft_p99']:.2f}; "
                 f"goodput / best other ({best_good}): {ours['goodput'] / rows[best_good]['goodput']:.2f}.")]
    if ours["shed"]:
        out.append(f"vlgate's refusals: {ours['shed_429']:.0f} x 429 (queue full), {ours['shed_503']:.0f} x 503 "
                   f"(queue deadline), {ours['shed_other']:.0f} other; Retry-After at most "
                   f"{ours['retry_after_max']:g} s, missing on {ours['retry_after_missing']:.0f}; the longest wait "
                   f"for a refusal {ours['refused_after_max']:.1f} s (queue bounds: {args.queue_size} requests, "
                   f"{args.queue_timeout:g} s); the first at {ours['first_refusal']:.0f} s (until then in arrival "
                   "order, then newest first).")
    out.append("")
    return rows


def summary(results: Results, args: argparse.Namespace,
            title: str = "") -> list[str]:
    """Policy x load, means over the seeds (ranges where the seeds differ)."""
    def cell(values: list[float], fmt: str) -> str:
        lo, hi, mean = min(values), max(values), statistics.fmean(values)
        if len(values) == 1 or f"{lo:{fmt}}" == f"{hi:{fmt}}":
            return f"{mean:{fmt}}"
        return f"{mean:{fmt}} ({lo:{fmt}}-{hi:{fmt}})"

    lines = [f"### Summary{title}: policy x load (mean over seeds {args.seeds}; range in brackets)", "",
             f"| load | policy | goodput, TTFT <= {args.slo:g} s (req/s) | share of offered | TTFT mean (s) "
             "| TTFT p99 (s) | shed |", "|---|---|---|---|---|---|---|"]
    for load, runs in results.items():
        for policy in POLICIES:
            ms = [run[policy] for run in runs]
            lines.append(f"| {load:.0%} | {policy} | {cell([m['goodput'] for m in ms], '.2f')} "
                         f"| {cell([100 * m['goodput_share'] for m in ms], '.0f')}% "
                         f"| {cell([m['ttft_mean'] for m in ms], '.2f')} | {cell([m['ttft_p99'] for m in ms], '.2f')} "
                         f"| {cell([100 * m['shed_share'] for m in ms], '.1f')}% |")
    lines.append("")
    for load, runs in results.items():
        if load < 1.0:
            continue
        rr = [run["vlgate"]["ttft_mean"] / run["round robin"]["ttft_mean"] for run in runs]
        ca = [run["vlgate"]["ttft_mean"] / run["cache-aware"]["ttft_mean"] for run in runs]
        good = [run["vlgate"]["goodput"] / max(run[p]["goodput"] for p in OTHERS) for run in runs]
        ideal = [run[IDEAL]["ttft_mean"] / run["round robin"]["ttft_mean"] for run in runs]
        shed = [run["vlgate"]["shed"] for run in runs]
        lines.append(f"- {load:.0%}: vlgate mean TTFT {cell(rr, '.2f')}x round robin's (the ideal bound: "
                     f"{cell(ideal, '.2f')}x), {cell(ca, '.2f')}x the cache-aware baseline's; goodput "
                     f"{cell(good, '.2f')}x the best other policy's; vlgate shed {cell(shed, '.0f')} requests per run.")
    lines.append("")
    return lines


def run_loads(args: argparse.Namespace, loads: str, sections: list[str]) -> Results:
    results: Results = {}
    for load in (float(x) for x in loads.split(",")):
        for seed in (int(x) for x in args.seeds.split(",")):
            results.setdefault(load, []).append(simulate(load, args, seed, sections))
    return results


def main() -> int:
    global PREFILL_TOK_S
    ap = argparse.ArgumentParser()
    ap.add_argument("--loads", default="0.5,0.7,0.9,1.0,1.2")
    ap.add_argument("--backends", type=int, default=4)
    ap.add_argument("--slots", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=1800)
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--slo", type=float, default=5.0, help="TTFT objective of goodput (s)")
    ap.add_argument("--prefill-tok-s", type=float, default=PREFILL_TOK_S, help="prefill speed of uncached prompt")
    ap.add_argument("--heavy-prefill-tok-s", type=float, default=600.0,
                    help="then 100%% and 120%% again with prefill this slow (prefill about half of a slot's "
                         "time: long prompts, slow prefill); 0: skip")
    ap.add_argument("--markdown", help="write the result as a markdown section here")
    ap.add_argument("--generic", action="store_true", help="vlgate rows without the fused fast path")
    ap.add_argument("--quick", action="store_true", help="one seed, 1200 s simulated (a few seconds)")
    args = ap.parse_args()
    if args.quick:
        args.seeds, args.seconds = "1", 1200.0
    PREFILL_TOK_S = args.prefill_tok_s
    bounds = Balancer([])
    args.queue_size, args.queue_timeout = bounds.queue_size, bounds.queue_timeout_s
    out = [(f"## Balancing quality: fleet simulation (bench/fleet_sim.py), {args.backends} backends x {args.slots} "
            "slots"), "",
           (f"How measured: virtual time, {args.seconds:g} s of arrivals per run (the first 10% skipped), seeds "
            f"{args.seeds}; prefill {PREFILL_TOK_S:g} tok/s of uncached prompt, decode {DECODE_TOK_S:g} tok/s per "
            f"slot, system prompt {SYSTEM_TOKENS}, image {IMAGE_TOKENS} tokens, prefix cache {CACHE_TOKENS} tokens "
            "per backend; load = offered requests / what the fleet serves with nothing cached (prefill is about "
            "12% of a slot's time). The vlgate rows run the real gateway/routing/balancer.py with its default queue "
            f"bounds ({args.queue_size} requests, {args.queue_timeout:g} s: 429 / 503 with Retry-After); round "
            "robin, random and least connections are proxies that send at once (llama-server defers what finds "
            "no free slot, unbounded); cache-aware is the Kubernetes routers' scheduler (bench/sim_policies.py: "
            "per-backend prefix index, queue-depth threshold 5, prefix 3 / queue 2 / KV 2 scorers), and "
            "\"cache-aware, sheds\" adds their saturation detector's shedding (429 once every backend is "
            f"saturated); \"{IDEAL}\" is a bound no router reaches (the real balancer, every backend reading "
            "one cache of the whole fleet's size). Goodput: answers whose first token came within "
            f"{args.slo:g} s, per second. A refused request is not retried. Deterministic: the machine does not "
            f"matter ({machine()})."), ""]
    sections: list[str] = []
    results = run_loads(args, args.loads, sections)
    heavy: list[str] = []
    if args.heavy_prefill_tok_s:
        PREFILL_TOK_S = args.heavy_prefill_tok_s
        heavy = summary(run_loads(args, "1.0,1.2", []), args,
                        f" with prefill at {PREFILL_TOK_S:g} tok/s (about half of a slot's time)")
    emit(out + summary(results, args) + heavy + sections, args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
