"""The routing policy's parts in isolation: filters, scorers, pickers, profiles, the scheduler (generic and
fused), bounded load, the holder wait, the holder table and the affinity keys."""

from __future__ import annotations

import random

import pytest

from vlgate.backends import Backend, BackendState
from vlgate.gateway.routing.affinity import chat_affinity, prompt_affinity
from vlgate.gateway.routing.fused import FusedDefault
from vlgate.gateway.routing.holders import HolderTable
from vlgate.gateway.routing.load import within_bound
from vlgate.gateway.routing.plugins.base import Cycle, Pick
from vlgate.gateway.routing.plugins.filters import FreeSlot
from vlgate.gateway.routing.plugins.pickers import MaxScore, Random, RoundRobin
from vlgate.gateway.routing.plugins.profile import (
    DEFAULT,
    LEAST_CONNECTIONS,
    PROFILES,
    ProfileSpec,
    build,
)
from vlgate.gateway.routing.plugins.scorers import (
    FewestHeld,
    FreeSlots,
    LeastConnections,
    PrefixHolder,
)
from vlgate.gateway.routing.scheduler import GenericScheduler, make_scheduler
from vlgate.gateway.routing.tuning import Tuning
from vlgate.gateway.routing.waiting import waits_for_holder

NONE: frozenset[Backend] = frozenset()


def backend(name: str, slots: int = 4, busy: int = 0, state: BackendState = BackendState.READY) -> Backend:
    b = Backend(url=f"http://{name}", name=name, slots=slots)
    b.set_state(state)
    b.in_flight = busy
    return b


def cycle(fleet: list[Backend], holder: Backend | None = None) -> Cycle:
    capacity = sum(b.slots for b in fleet)
    return Cycle(None, NONE, fleet, capacity - sum(b.free_slots for b in fleet), capacity, holder)


# -- filters, scorers, pickers -----------------------------------------------------------------------
def test_free_slot_filter_drops_full_backends_in_order() -> None:
    a, b, c, d = backend("a", busy=4), backend("b", busy=1), backend("c", busy=0), backend("d", busy=2)
    d.external_busy = 2  # another gateway replica fills it
    assert FreeSlot().filter(cycle([a, b, c, d]), [a, b, c, d]) == [b, c]


def test_prefix_holder_scores_its_holder_only_within_bounded_load() -> None:
    holder, other = backend("h", busy=2), backend("o", busy=0)
    tuning = Tuning(affinity_load=1.0)
    scorer = PrefixHolder(tuning)
    fleet = [holder, other]  # load 2 of 8: bound 1.0 x (2 x 4 / 8 + 1) = 2 < 3 busy after this request
    assert scorer.score(cycle(fleet, holder), fleet) == [0.0, 0.0]
    tuning.affinity_load = 1.5  # a reload: 1.5 x 2 = 3, read at the next pick
    assert scorer.score(cycle(fleet, holder), fleet) == [1.0, 0.0]
    assert scorer.score(cycle(fleet, None), fleet) == [0.0, 0.0]


def test_free_slots_and_least_connections_scores_are_in_unit_range_and_ordered() -> None:
    fleet = [backend("a", busy=3), backend("b", busy=0), backend("c", slots=8, busy=2), backend("d", busy=4)]
    assert FreeSlots().score(cycle(fleet), fleet) == [1 / 6, 4 / 6, 1.0, 0.0]
    least = LeastConnections().score(cycle(fleet), fleet)
    assert all(0 < s <= 1 for s in least) and least[1] == 1.0
    assert sorted(range(4), key=lambda i: -least[i]) == [1, 2, 0, 3]


def test_pickers() -> None:
    fleet = [backend(n) for n in "abcd"]
    c = cycle(fleet)
    assert MaxScore().pick(c, fleet, [0.5, 1.0, 1.0, 0.2]) is fleet[1]  # a tie goes to the earliest
    rr = RoundRobin()
    assert [rr.pick(c, fleet, []).name for _ in range(6)] == list("abcdab")
    picks = [Random(random.Random(3)).pick(c, fleet, []) for _ in range(2)]
    assert picks[0] is picks[1] and picks[0] in fleet  # seeded: reproducible


# -- profiles ----------------------------------------------------------------------------------------
def test_the_default_profile_builds_the_documented_plug_ins() -> None:
    profile = build(DEFAULT)
    assert [type(f) for f in profile.filters] == [FreeSlot]
    assert [(type(s), w) for s, w in profile.scorers] == [(PrefixHolder, 2.0), (FreeSlots, 1.0), (FewestHeld, 1e-6)]
    assert isinstance(profile.picker, MaxScore)
    assert isinstance(make_scheduler(DEFAULT), FusedDefault)
    assert isinstance(make_scheduler(DEFAULT, fused=False), GenericScheduler)
    assert isinstance(make_scheduler(LEAST_CONNECTIONS), GenericScheduler)
    assert set(PROFILES) == {"vlgate", "round robin", "random", "least connections"}


def test_a_profile_naming_an_unknown_plug_in_or_a_bad_weight_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown scorer 'kv-use'"):
        build(ProfileSpec("x", scorers=(("kv-use", 1.0),)))
    with pytest.raises(ValueError, match="unknown picker"):
        build(ProfileSpec("x", picker="best"))
    with pytest.raises(ValueError, match="weight must be positive"):
        build(ProfileSpec("x", scorers=(("free-slots", 0.0),)))


def test_a_profile_without_the_prefix_scorer_ignores_the_holder() -> None:
    a, b = backend("a", busy=1), backend("b", busy=0)
    holders = HolderTable()
    holders.record(("conv",), a)
    spec = ProfileSpec("slots only", filters=("free-slot",), scorers=(("free-slots", 1.0),))
    pick = make_scheduler(spec, holders=holders).pick([a, b], ("conv",))
    assert pick.backend is b and pick.holder is a and not pick.affinity_hit


# -- the scheduler -----------------------------------------------------------------------------------
@pytest.mark.parametrize("fused", [True, False])
def test_the_scheduler_spreads_ties_and_measures_the_usable_fleet(fused: bool) -> None:
    fleet = [backend(n) for n in "abcd"]
    scheduler = make_scheduler(DEFAULT, fused=fused)
    assert sorted(scheduler.pick(fleet).backend.name for _ in range(4)) == list("abcd")  # type: ignore[union-attr]
    fleet[0].in_flight = 4  # full: load, but no candidate
    fleet[1].set_state(BackendState.LOADING)
    pick = scheduler.pick(fleet, None, frozenset({fleet[2]}))
    assert pick == Pick(fleet[3], None, 4, 8, False)
    fleet[3].in_flight = 4
    assert scheduler.pick(fleet, None, frozenset({fleet[2]})) == Pick(None, None, 8, 8, False)


@pytest.mark.parametrize("fused", [True, False])
def test_the_holder_wins_within_its_bound_and_counts_a_hit_only_over_the_most_free(fused: bool) -> None:
    a, b = backend("a", busy=1), backend("b", busy=0)
    holders = HolderTable()
    holders.record(("conv",), a)
    tuning = Tuning(affinity_load=1.5)
    scheduler = make_scheduler(DEFAULT, tuning, holders, fused=fused)
    assert scheduler.pick([a, b], ("conv",)) == Pick(a, a, 1, 8, True)
    holders.record(("conv",), b)  # the holder is the most free anyway: no hit
    assert scheduler.pick([a, b], ("conv",)) == Pick(b, b, 1, 8, False)
    a.in_flight, b.in_flight = 0, 3  # over its bound (1.5 x (3 x 4 / 8 + 1) = 3.75 < 4): most free slots
    assert scheduler.pick([a, b], ("conv",)) == Pick(a, b, 3, 8, False)


@pytest.mark.parametrize("fused", [True, False])
def test_of_equally_free_backends_the_one_holding_the_fewest_prefixes_wins(fused: bool) -> None:
    """New conversations spread evenly: 4 x 2 slots, bench/prefix_cache_real.py at 0-2 s between turns had
    4/5/1/6 of 16 conversations per backend, and the 6 met their holder full."""
    a, b, c = backend("a"), backend("b"), backend("c", busy=1)
    holders = HolderTable()
    holders.record(("c1", "image"), a)
    holders.record(("c2",), b)
    scheduler = make_scheduler(DEFAULT, Tuning(), holders, fused=fused)
    assert {scheduler.pick([a, b, c]).backend for _ in range(3)} == {b}  # a holds 2, c has a slot less
    holders.record(("c3", "c4"), b)
    assert scheduler.pick([a, b, c]).backend is a
    # a holder as free as the least-held backend wins over it (an affinity hit); once it is the most free, no hit
    assert scheduler.pick([a, b, c], ("c3",)) == Pick(b, b, 1, 12, True)
    a.in_flight = 1
    assert scheduler.pick([a, b, c], ("c3",)) == Pick(b, b, 2, 12, False)


def test_the_holder_table_counts_the_keys_each_backend_holds() -> None:
    a, b = backend("a"), backend("b")
    holders = HolderTable(entries=3)
    holders.record(("k1", "k2"), a)
    holders.record(("k2",), b)  # k2 moves
    assert dict(holders.held) == {a: 1, b: 1}
    holders.record(("k3", "k4"), b)  # k1, the oldest, is evicted
    assert dict(holders.held) == {b: 3} and holders.get("k1") is None
    holders.forget(b)
    assert dict(holders.held) == {} and len(holders) == 0


def random_fleet(rng: random.Random) -> tuple[list[Backend], frozenset[Backend]]:
    states = [BackendState.READY] * 6 + [BackendState.LOADING, BackendState.DOWN]
    fleet = []
    for i in range(rng.randint(0, 16)):
        b = backend(f"b{i}", slots=rng.randint(1, 6), state=rng.choice(states))
        b.in_flight = rng.randint(0, b.slots)
        b.external_busy = rng.randint(0, b.slots - b.in_flight) if rng.random() < 0.2 else 0
        fleet.append(b)
    return fleet, frozenset(b for b in fleet if rng.random() < 0.1)


def test_the_fused_fast_path_picks_exactly_like_the_generic_plug_ins() -> None:
    """The fast path is only allowed because it is the default profile, not an approximation of it."""
    rng = random.Random(20261201)
    keys = [f"k{i}" for i in range(12)]
    for _ in range(300):
        fleet, exclude = random_fleet(rng)
        holders, tuning = HolderTable(), Tuning(affinity_load=rng.choice([1.0, 1.25, 1.5, 3.0]))
        for key in keys:
            if fleet and rng.random() < 0.6:
                holders.record((key,), rng.choice(fleet))
        fused = make_scheduler(DEFAULT, tuning, holders)
        generic = make_scheduler(DEFAULT, tuning, holders, fused=False)
        for _ in range(20):  # the rotations advance together
            affinity = tuple(rng.sample(keys, rng.randint(1, 3))) if rng.random() < 0.8 else None
            assert fused.pick(fleet, affinity, exclude) == generic.pick(fleet, affinity, exclude)
            if fleet and rng.random() < 0.5:  # the fleet moves between picks
                b = rng.choice(fleet)
                b.in_flight = rng.randint(0, b.slots - b.external_busy)


# -- bounded load and the holder wait ----------------------------------------------------------------
def test_bounded_load_admits_up_to_the_bound_inclusive() -> None:
    holder = backend("h", busy=2)  # one more makes 3; fleet load 4 of 8: bound = f x (4 x 4 / 8 + 1) = 3f
    assert within_bound(holder, 4, 8, 1.0)  # 3 <= 3
    holder.in_flight = 3
    assert not within_bound(holder, 4, 8, 1.0) and within_bound(holder, 4, 8, 4 / 3)


def test_the_holder_may_always_run_two_requests() -> None:
    """Two-slot backends: while only the holder is busy (1 of 8 slots), 1.5 x (1 x 2 / 8 + 1) = 1.9 would send
    the conversation away from the free slot beside its prefix (bench/prefix_cache_real.py, 0-2 s between
    turns: 4 of 6 lost prefixes); a third request is still held to the bound."""
    holder = backend("h", slots=2, busy=1)
    assert within_bound(holder, 1, 8, 1.5)
    wide = backend("w", slots=4, busy=2)
    assert not within_bound(wide, 2, 16, 1.5)  # 3 > max(1.5 x (2 x 4 / 16 + 1), 2) = 2.25


def holder_wait_case(utilization: float = 0.9, waited_s: float | None = None, line: int = 0,
                     best_busy: int = 1) -> tuple[bool, dict[Backend, int]]:
    holder, best = backend("h", slots=2, busy=2), backend("b", slots=4, busy=best_busy)
    ahead = {holder: line}
    pick = Pick(best, holder, 2 + best_busy, 6, False)
    return waits_for_holder(pick, Tuning(affinity_load=3.0, affinity_wait_s=5.0), utilization, waited_s, ahead), ahead


def test_a_full_holder_is_waited_for_only_on_a_busy_fleet_for_a_while_behind_a_short_line() -> None:
    waits, ahead = holder_wait_case()
    assert waits and list(ahead.values()) == [1]  # it joins the holder's line
    assert not holder_wait_case(utilization=0.5)[0]  # quiet fleet: the free slot elsewhere would idle
    assert not holder_wait_case(waited_s=5.0)[0]  # waited long enough
    assert not holder_wait_case(line=4)[0]  # twice the holder's slots already wait for it
    assert not holder_wait_case(best_busy=0)[0]  # a backend sits entirely idle
    holder, best = backend("h", slots=2, busy=2), backend("b", slots=4, busy=0)
    pick, tuning = Pick(best, holder, 2, 6, False), Tuning(affinity_load=3.0, affinity_wait_s=5.0)
    # ...unless its last request ended a moment ago: its own conversations' next turns are on their way
    assert waits_for_holder(pick, tuning, 0.9, None, None, lambda b: 0.1)
    assert not waits_for_holder(pick, tuning, 0.9, None, None, lambda b: 0.3)


def test_no_wait_without_a_full_holder_within_its_bound() -> None:
    tuning = Tuning(affinity_load=1.0)
    holder, best = backend("h", busy=4), backend("b", busy=0)
    assert not waits_for_holder(Pick(best, None, 4, 8, False), tuning, 1.0, None, {})
    assert not waits_for_holder(Pick(best, holder, 4, 8, False), tuning, 1.0, None, {})  # 5 > 1 x (2 + 1)
    holder.in_flight = 3
    assert not waits_for_holder(Pick(best, holder, 3, 8, False), Tuning(affinity_load=9), 1.0, None, {})  # free
    holder.in_flight = 4
    ahead: dict[Backend, int] = {}
    assert waits_for_holder(Pick(None, holder, 8, 8, False), Tuning(affinity_load=9), 0.0, None, ahead)
    assert ahead == {}  # nothing else free: it queues anyway, not in the holder's line


# -- the holder table --------------------------------------------------------------------------------
def test_holders_most_specific_key_first_skipping_unusable_backends() -> None:
    a, b = backend("a"), backend("b")
    table = HolderTable(entries=3)
    table.record(("conv", "img"), a)
    table.record(("img2",), b)
    assert table.holder(("conv", "img2"), NONE) is a
    a.in_flight = 4
    assert table.holder(("conv", "img2"), NONE) is a  # full still holds the prefix: the request may wait
    assert table.holder(("conv", "img2"), frozenset({a})) is b  # a retry skips it
    a.set_state(BackendState.DOWN)
    assert table.holder(("conv",), NONE) is None
    table.record(("new",), b)  # a fourth key: the least recently used one goes
    assert table.get("conv") is None and len(table) == 3
    table.forget(b)
    assert [k for k, _ in table.items()] == ["img"]


# -- affinity keys -----------------------------------------------------------------------------------
SYSTEM = {"role": "system", "content": "You describe images."}


def test_every_turn_of_a_conversation_shares_its_first_key() -> None:
    first = [SYSTEM, {"role": "user", "content": "What is this?"}]
    later = first + [{"role": "assistant", "content": "A cat."}, {"role": "user", "content": "Its colour?"}]
    k1, k2 = chat_affinity(first, ["img1"]), chat_affinity(later, ["img1"])
    assert k1 is not None and k2 is not None and k1 == k2
    assert chat_affinity([SYSTEM, {"role": "user", "content": "Another question"}], ["img1"]) != k1
    assert chat_affinity(first, ["img2"]) != k1


def test_a_new_conversation_about_a_known_image_meets_it_by_the_image_key() -> None:
    one = chat_affinity([SYSTEM, {"role": "user", "content": "Describe it."}], ["img1", "img1"])
    two = chat_affinity([SYSTEM, {"role": "user", "content": "Count the cats."}], ["img1"])
    other_system = chat_affinity([{"role": "system", "content": "Be terse."}, {"role": "user", "content": "x"}],
                                 ["img1"])
    assert one is not None and two is not None and other_system is not None
    assert len(one) == 2 and one[0] != two[0] and one[1] == two[1]  # duplicate images: one key each
    assert other_system[1] != one[1]  # another system prompt: another prefix
    assert len(chat_affinity([{"role": "user", "content": "hi"}], []) or ()) == 1


def test_affinity_of_odd_inputs() -> None:
    assert chat_affinity([], []) is None
    assert chat_affinity(["not a message"], []) is None
    long = "p" * 300
    assert prompt_affinity(long) == prompt_affinity(long[:256] + "different tail")
    assert prompt_affinity(long) != prompt_affinity("q" + long)
    assert prompt_affinity(["token", "ids"]) is None
