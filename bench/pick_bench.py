"""Per-pick cost of the balancer's policy: the generic plug-in path vs the fused default vs before.

    python bench/pick_bench.py                     # 16 backends x 4 slots, microseconds per pick
    python bench/pick_bench.py --backends 64 --before d426147 --markdown PATH

A pick runs for every arriving request, and again for each queued request on every freed slot, so
its cost is paid many times per request under load. Every path picks over the same random fleet
states (busy slots, prefix holders, half the requests with a known prefix). "before" is the fused
`Balancer._pick` of revision `--before` (git show; skipped outside a git checkout), "balancer" is
today's `Balancer._pick` (the default profile's fast path plus the wait rule: the like-for-like
number), "fused" and "generic" the two schedulers alone.
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import subprocess
import sys
import tempfile
import timeit
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))

from common import emit, machine

from vlgate.backends import Backend, BackendState
from vlgate.gateway.routing.balancer import Balancer
from vlgate.gateway.routing.plugins.profile import DEFAULT
from vlgate.gateway.routing.scheduler import make_scheduler

BEFORE = "d426147"  # the last revision with the policy fused into Balancer._pick


def fleet(n: int, slots: int, rng: random.Random) -> list[Backend]:
    backends = [Backend(url=f"http://b{i}", name=f"b{i}", slots=slots) for i in range(n)]
    for b in backends:
        b.set_state(BackendState.READY)
        b.in_flight = rng.randint(0, slots)
    return backends


def requests(n: int, rng: random.Random) -> list[tuple[object, ...] | None]:
    """Half with a prefix some backend holds (conversation, then image key), a quarter unknown, a quarter none."""
    out: list[tuple[object, ...] | None] = []
    for _ in range(n):
        r = rng.random()
        out.append((f"conv{rng.randrange(64)}", f"img{rng.randrange(16)}") if r < 0.5
                   else (f"new{rng.randrange(10**6)}",) if r < 0.75 else None)
    return out


def load_before(rev: str) -> ModuleType | None:
    """The balancer module as it was at `rev`, imported under another name."""
    try:
        src = subprocess.run(["git", "show", f"{rev}:vlgate/gateway/routing/balancer.py"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    path = Path(tempfile.mkdtemp()) / "balancer_before.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("balancer_before", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def per_pick_us(pick: Callable[[tuple[object, ...] | None], object], reqs: list[tuple[object, ...] | None],
                repeat: int) -> float:
    """The best of `repeat` runs over all requests, in microseconds per pick."""
    def run() -> None:
        for affinity in reqs:
            pick(affinity)
    return min(timeit.repeat(run, number=1, repeat=repeat)) / len(reqs) * 1e6


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backends", type=int, default=16)
    ap.add_argument("--slots", type=int, default=4)
    ap.add_argument("--picks", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--before", default=BEFORE, help="git revision whose fused Balancer._pick is 'before'")
    ap.add_argument("--markdown", help="write the result as a markdown section here")
    args = ap.parse_args()
    rng = random.Random(1)
    backends = fleet(args.backends, args.slots, rng)
    reqs = requests(args.picks, rng)
    none: frozenset[Backend] = frozenset()

    balancer = Balancer(backends)
    for i in range(64):  # conversations and images the fleet already served
        balancer.holders.record((f"conv{i}", f"img{i % 16}"), rng.choice(backends))
    fused = make_scheduler(DEFAULT, balancer.tuning, balancer.holders)
    generic = make_scheduler(DEFAULT, balancer.tuning, balancer.holders, fused=False)
    paths: dict[str, Callable[[tuple[object, ...] | None], object]] = {
        "balancer (today: fast path + wait rule)": lambda a: balancer._pick(a, none),
        "fused scheduler": lambda a: fused.pick(backends, a, none),
        "generic scheduler (plug-ins)": lambda a: generic.pick(backends, a, none),
    }
    old = load_before(args.before)
    if old is not None:
        before = old.Balancer(backends)
        for key, holder in balancer.holders.items():
            before._affinity[key] = holder
        paths = {f"before ({args.before}: fused Balancer._pick)": lambda a: before._pick(a, none), **paths}
    results = {name: per_pick_us(pick, reqs, args.repeat) for name, pick in paths.items()}
    base = next(iter(results.values()))
    out = [f"## Per-pick cost (bench/pick_bench.py), {args.backends} backends x {args.slots} slots", "",
           (f"How measured: {args.picks} picks over one random fleet state (half the requests with a held prefix), "
            f"best of {args.repeat}; {machine()}, Python {sys.version.split()[0]}."), "",
           "| path | µs per pick | vs first row |", "|---|---|---|"]
    out += [f"| {name} | {us:.2f} | {us - base:+.2f} µs |" for name, us in results.items()]
    emit(out, args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
