"""The allocation strategies over many shapes of group, without a broker."""

import itertools
import random
from collections.abc import Mapping, Sequence

import pytest
from logicblocks.event.types import CategoryIdentifier

from eventcomposition.broker.allocation import (
    GroupPlan,
    GroupState,
    Source,
    SubscriberRequest,
    allocation_strategy,
    balanced,
    fill,
    plan_allocation,
    target_requests,
    unheld,
)

SOURCES: list[Source] = [CategoryIdentifier(f"orders-{n:02d}") for n in range(50)]
SHAPES = [
    (subscribers, sources)
    for subscribers in range(1, 11)
    for sources in (1, 2, 3, 5, 7, 12, 13, 24, 50)
]


def ids(count: int) -> list[str]:
    return [f"s{n}" for n in range(count)]


def group(
    subscriber_ids: Sequence[str],
    sources: Sequence[Source],
    holdings: Mapping[str, Sequence[Source]] | None = None,
    unreleased: frozenset[Source] = frozenset(),
) -> GroupState:
    return GroupState(
        group="g",
        subscribers=[SubscriberRequest(i, tuple(sources)) for i in subscriber_ids],
        holdings=dict(holdings or {}),
        unreleased=unreleased,
    )


def random_holdings(
    rng: random.Random, subscriber_ids: Sequence[str], sources: Sequence[Source]
) -> dict[str, list[Source]]:
    """Each source held by a random subscriber or by nobody (a skewed start)."""
    holdings: dict[str, list[Source]] = {i: [] for i in subscriber_ids}
    favourite = rng.choice(subscriber_ids)
    for source in sources:
        roll = rng.random()
        if roll < 0.2:
            continue
        holder = favourite if roll < 0.5 else rng.choice(subscriber_ids)
        holdings[holder].append(source)
    return holdings


def fewest_moves(holdings: Mapping[str, Sequence[Source]], sources: int) -> int:
    """Brute force: the least any balanced allocation must take from holders."""
    held = {i: len(h) for i, h in holdings.items()}
    base, extra = divmod(sources, len(held))
    best = None
    for bigger in itertools.combinations(sorted(held), extra):
        cost = sum(
            max(0, count - base - (1 if i in bigger else 0))
            for i, count in held.items()
        )
        best = cost if best is None else min(best, cost)
    assert best is not None
    return best


def assert_one_holder_each(plan: GroupPlan) -> None:
    all_held = [s for sources in plan.holdings.values() for s in sources]
    assert len(all_held) == len(set(all_held)), "a source has two holders"


def assert_staged(state: GroupState, plan: GroupPlan) -> None:
    """Nothing held by another live subscriber or unreleased is assigned."""
    for subscriber_id, sources in plan.holdings.items():
        for source in sources:
            if source in state.holdings.get(subscriber_id, ()):
                continue
            assert source not in state.unreleased
            others = [
                other
                for other, held in state.holdings.items()
                if other != subscriber_id and source in held
            ]
            assert not others, f"{source} moved from {others} in one plan"


def converge(
    state: GroupState, max_moves: int, rounds: int = 200
) -> tuple[GroupState, int]:
    """Plan, apply and release (one round later) until nothing changes."""
    total_moves = 0
    for _ in range(rounds):
        [plan] = plan_allocation([state], balanced, max_moves)
        assert_one_holder_each(plan)
        assert_staged(state, plan)
        assert plan.moves <= max(0, max_moves - len(state.unreleased))
        assert len(plan.moving) <= max_moves
        total_moves += plan.moves
        unchanged = not plan.moving and not plan.assigned and not state.unreleased
        state = GroupState(
            group=state.group,
            subscribers=state.subscribers,
            holdings=plan.holdings,
            unreleased=plan.moving,
        )
        if unchanged:
            return state, total_moves
    raise AssertionError("the allocation did not settle")


def assert_balanced(state: GroupState, sources: int) -> None:
    counts = [len(h) for h in state.holdings.values()]
    assert sum(counts) == sources
    assert max(counts) - min(counts) <= 1


@pytest.mark.parametrize(("subscribers", "sources"), SHAPES)
def test_from_a_random_start_settles_balanced_with_the_fewest_moves(
    subscribers: int, sources: int
) -> None:
    rng = random.Random(subscribers * 100 + sources)
    for _ in range(5):
        subscriber_ids = ids(subscribers)
        holdings = random_holdings(rng, subscriber_ids, SOURCES[:sources])
        start = group(subscriber_ids, SOURCES[:sources], holdings)

        settled, moves = converge(start, max_moves=rng.choice([1, 3, 32]))

        assert_balanced(settled, sources)
        assert moves == fewest_moves(holdings, sources)


@pytest.mark.parametrize(("subscribers", "sources"), SHAPES)
def test_a_join_and_a_leave_move_only_what_balance_needs(
    subscribers: int, sources: int
) -> None:
    everyone = ids(subscribers + 1)
    settled, _ = converge(group(everyone[:-1], SOURCES[:sources]), max_moves=32)
    assert_balanced(settled, sources)

    joined, join_moves = converge(
        group(everyone, SOURCES[:sources], settled.holdings), max_moves=32
    )
    assert_balanced(joined, sources)
    # The newcomer ends with floor(S/N) sources, every one taken from a holder.
    assert join_moves == len(joined.holdings[everyone[-1]]) == sources // len(everyone)

    leaver = everyone[0]
    remaining = {i: h for i, h in joined.holdings.items() if i != leaver}
    left, leave_moves = converge(
        group(everyone[1:], SOURCES[:sources], remaining), max_moves=32
    )
    assert_balanced(left, sources)
    assert leave_moves == 0
    for subscriber_id, held in remaining.items():
        assert set(held) <= set(left.holdings[subscriber_id])


@pytest.mark.parametrize(("subscribers", "sources"), SHAPES[::3])
def test_plans_do_not_depend_on_the_order_of_their_input(
    subscribers: int, sources: int
) -> None:
    rng = random.Random(sources * 7 + subscribers)
    subscriber_ids = ids(subscribers)
    holdings = random_holdings(rng, subscriber_ids, SOURCES[:sources])
    state = group(subscriber_ids, SOURCES[:sources], holdings)
    shuffled_ids = list(subscriber_ids)
    rng.shuffle(shuffled_ids)
    shuffled = GroupState(
        group="g",
        subscribers=[
            SubscriberRequest(i, tuple(rng.sample(SOURCES[:sources], sources)))
            for i in shuffled_ids
        ],
        holdings={i: holdings[i] for i in shuffled_ids},
    )

    for strategy in (balanced, fill):
        assert strategy(state, 3) == strategy(shuffled, 3)


def test_a_source_leaving_its_holder_is_not_assigned_in_the_same_plan() -> None:
    sources = SOURCES[:12]
    state = group(["a", "b", "c"], sources, {"a": sources[:6], "b": sources[6:]})

    plan = balanced(state, 32)

    assert plan.holdings["c"] == ()
    assert plan.moves == 4
    assert len(plan.moving) == 4
    assert plan.assigned == frozenset()

    released = GroupState("g", state.subscribers, plan.holdings)
    after = balanced(released, 32)

    assert set(after.holdings["c"]) == plan.moving
    assert after.moves == 0


def test_unreleased_sources_wait_and_count_against_the_bound() -> None:
    sources = SOURCES[:12]
    holdings = {"a": sources[:4], "b": sources[4:8], "c": sources[8:10]}
    waiting = frozenset(sources[10:])
    state = group(["a", "b", "c", "d"], sources, holdings, unreleased=waiting)

    [plan] = plan_allocation([state], balanced, max_moves=3)

    assert not waiting & {s for h in plan.holdings.values() for s in h}
    # Two of the three moves are already in flight: one more source may move.
    assert plan.moves == 1


def test_the_move_budget_is_shared_by_all_groups() -> None:
    first = GroupState(
        "a-group",
        [SubscriberRequest(i, tuple(SOURCES[:10])) for i in ("x", "y")],
        {"x": SOURCES[:10]},
    )
    second = GroupState(
        "b-group",
        [SubscriberRequest(i, tuple(SOURCES[10:20])) for i in ("x", "y")],
        {"x": SOURCES[10:20]},
    )

    plans = plan_allocation([second, first], balanced, max_moves=7)

    assert [p.group for p in plans] == ["a-group", "b-group"]
    assert [p.moves for p in plans] == [5, 2]


def test_fill_allocates_only_what_nobody_holds() -> None:
    sources = SOURCES[:12]
    state = group(["a", "b", "c"], sources, {"a": sources[:6], "b": sources[6:9]})

    plan = fill(state, 32)

    assert plan.holdings["a"] == tuple(sources[:6])
    assert plan.holdings["b"][:3] == tuple(sources[6:9])
    assert plan.moves == 0
    assert plan.moving == frozenset()
    assert sorted(len(h) for h in plan.holdings.values()) == [3, 3, 6]


def test_during_a_rolling_deploy_the_largest_request_wins() -> None:
    old, new = tuple(SOURCES[:4]), tuple(SOURCES[:6])
    state = GroupState(
        "g",
        [
            SubscriberRequest("old-1", old),
            SubscriberRequest("old-2", old),
            SubscriberRequest("new-1", new),
        ],
        {"old-1": SOURCES[:2], "old-2": SOURCES[2:4]},
    )

    plan = balanced(state, 32)

    assert plan.eligible == {"new-1"}
    assert plan.holdings["old-1"] == plan.holdings["old-2"] == ()
    # The old subscribers' sources wait for their release; the new ones are free.
    assert plan.moving == set(SOURCES[:4])
    assert plan.holdings["new-1"] == tuple(SOURCES[4:6])
    assert unheld(GroupState("g", state.subscribers, plan.holdings)) == old


def test_equal_sized_requests_tie_break_on_the_most_asked_for() -> None:
    one, other = tuple(SOURCES[:2]), tuple(SOURCES[2:4])
    subscribers = [
        SubscriberRequest("a", one),
        SubscriberRequest("b", other),
        SubscriberRequest("c", other),
    ]

    assert target_requests(subscribers) == (other, frozenset({"b", "c"}))
    assert target_requests(subscribers[:2]) == (one, frozenset({"a"}))


def test_a_source_held_twice_stays_with_one_holder() -> None:
    sources = SOURCES[:2]
    state = group(["a", "b"], sources, {"a": sources, "b": sources[:1]})

    plan = balanced(state, 32)

    assert_one_holder_each(plan)
    assert plan.holdings == {"a": (sources[0],), "b": ()}
    assert plan.moving == {sources[1]}


def test_unknown_strategy_names_are_refused_with_the_choices() -> None:
    assert allocation_strategy("fill") is fill
    with pytest.raises(ValueError, match="use one of balanced, fill"):
        allocation_strategy("round-robin")
