"""Allocation strategies: which subscriber of a group holds which event source.

A strategy is a pure function of one group's state (its live subscribers with their
requests, what each holds now, and the sources revoked earlier that their old holder
has not released yet) and of a budget of moves. It returns the group's target
allocation for this distribution. Nothing here touches a store or a clock.

- ``balanced`` (the default) is sticky: every eligible subscriber ends with
  floor(S/N) or ceil(S/N) of the group's S sources, the ceil going to those that
  hold the most already, so a source moves only when balance needs it (the fewest
  moves).
- ``fill`` is logicblocks' behaviour: only sources nobody holds are allocated
  (each to the least loaded subscriber); nothing held is ever moved.

Moves are staged, revoke before assign: a source taken from its holder is held by
nobody in the plan that takes it. The caller reports it as ``unreleased`` until its
old holder lets go; only a later plan gives it to another subscriber. So one source
is never allocated to two live subscribers.

Subscribers of one group whose requests differ (a rolling deploy) are handled as
logicblocks does: the subscribers asking for the largest set of sources are
eligible and share it; the others get nothing (their sources are revoked). Unlike
logicblocks, requests are compared as sets (order does not matter) and ties are
broken deterministically (the set more subscribers ask for, then the smallest).
"""

import heapq
from collections.abc import Callable, Iterable, Mapping, Sequence, Set
from dataclasses import dataclass, field
from functools import cached_property

from logicblocks.event.types import EventSourceIdentifier

type Source = EventSourceIdentifier


@dataclass(frozen=True)
class SubscriberRequest:
    """A live subscriber of a group and the sources it asks for."""

    id: str
    requests: tuple[Source, ...]


@dataclass(frozen=True)
class GroupState:
    """One group as a strategy sees it.

    ``holdings`` maps live subscribers' ids to the sources they hold now (the
    subscriptions of subscribers whose heartbeat aged out are not in it: their
    sources are free). ``unreleased`` are sources revoked earlier that nobody holds
    and that their old holder may still be processing: no plan assigns them.
    """

    group: str
    subscribers: Sequence[SubscriberRequest]
    holdings: Mapping[str, Sequence[Source]] = field(default_factory=dict)
    unreleased: Set[Source] = frozenset()


@dataclass(frozen=True)
class GroupPlan:
    """The target allocation of one group for one distribution.

    ``sources`` are the sources the group shares out (the eligible request);
    ``holdings`` has every live subscriber (ineligible ones with nothing);
    ``assigned`` the sources given to a subscriber that did not hold them;
    ``moving`` the requested sources taken from a holder and held by nobody now
    (they wait for their release); ``moves`` how many sources were taken from an
    eligible holder to balance the group (what the move budget bounds).
    """

    group: str
    sources: tuple[Source, ...]
    holdings: Mapping[str, tuple[Source, ...]]
    eligible: frozenset[str]
    assigned: frozenset[Source]
    moving: frozenset[Source]
    moves: int


type AllocationStrategy = Callable[[GroupState, int], GroupPlan]


def target_requests(
    subscribers: Iterable[SubscriberRequest],
) -> tuple[tuple[Source, ...], frozenset[str]]:
    """The sources a group shares out, in a stable order, and who is eligible.

    The largest requested set wins; then the set more subscribers ask for; then the
    smallest by the sources' text, so that the answer never depends on input order.
    """
    distinct: list[_Request] = []
    for subscriber in subscribers:
        for request in distinct:
            if request.matches(subscriber.requests):
                request.askers.append(subscriber.id)
                break
        else:
            distinct.append(_Request(subscriber.requests, [subscriber.id]))
    if not distinct:
        return (), frozenset()
    if len(distinct) == 1:
        [chosen] = distinct
        return tuple(sorted(chosen.as_set, key=repr)), frozenset(chosen.askers)
    chosen = min(
        distinct,
        key=lambda r: (-len(r.as_set), -len(r.askers), sorted(map(repr, r.as_set))),
    )
    return tuple(sorted(chosen.as_set, key=repr)), frozenset(chosen.askers)


@dataclass
class _Request:
    # Every subscriber's requests are compared with the few distinct ones seen so
    # far: comparing equal tuples is much cheaper than hashing every source (which
    # logicblocks' identifiers do through their text), and a group seldom has more
    # than two distinct requests (during a rolling deploy).
    requests: tuple[Source, ...]
    askers: list[str]

    @cached_property
    def as_set(self) -> frozenset[Source]:
        return frozenset(self.requests)

    def matches(self, requests: tuple[Source, ...]) -> bool:
        if requests == self.requests:
            return True
        return len(requests) >= len(self.as_set) and frozenset(requests) == self.as_set


def unheld(state: GroupState) -> tuple[Source, ...]:
    """The group's requested sources that no live subscriber holds."""
    target, _ = target_requests(state.subscribers)
    held = {source for sources in state.holdings.values() for source in sources}
    return tuple(source for source in target if source not in held)


@dataclass
class _Draft:
    """What a strategy starts from: valid holdings kept, everything else let go.

    Sources are positions in ``target``: identifiers hash through their text, so
    working with integers keeps a distribution cheap.
    """

    target: tuple[Source, ...]
    eligible: list[str]
    kept: dict[str, list[int]]
    held_before: set[int]
    free: list[int]
    given: list[int] = field(default_factory=list)


def _positions(
    position: Mapping[Source, int], sources: Iterable[Source]
) -> Iterable[int]:
    for source in sources:
        index = position.get(source)
        if index is not None:
            yield index


def _draft(state: GroupState) -> _Draft:
    target, eligible_ids = target_requests(state.subscribers)
    position = {source: index for index, source in enumerate(target)}
    eligible = sorted(eligible_ids)
    kept: dict[str, list[int]] = {}
    taken: set[int] = set()
    for subscriber_id in eligible:
        mine: list[int] = []
        for index in _positions(position, state.holdings.get(subscriber_id, ())):
            # A source held twice (left by an earlier leader) stays with the first.
            if index not in taken:
                mine.append(index)
                taken.add(index)
        kept[subscriber_id] = mine
    # Sources of ineligible subscribers are not free: they must be released first.
    held_before = set(taken)
    for subscriber_id, sources in state.holdings.items():
        if subscriber_id not in eligible_ids:
            held_before.update(_positions(position, sources))
    blocked = held_before.union(_positions(position, state.unreleased))
    free = [index for index in range(len(target)) if index not in blocked]
    return _Draft(target, eligible, kept, held_before, free)


def _plan(state: GroupState, draft: _Draft, moves: int) -> GroupPlan:
    target = draft.target
    kept = draft.kept
    holdings = {
        s.id: tuple(target[index] for index in kept.get(s.id, ()))
        for s in state.subscribers
    }
    held_after = {index for indices in kept.values() for index in indices}
    return GroupPlan(
        group=state.group,
        sources=target,
        holdings=holdings,
        eligible=frozenset(draft.eligible),
        # Only free sources are given out: none was held by its new subscriber.
        assigned=frozenset(target[index] for index in draft.given),
        moving=frozenset(target[index] for index in draft.held_before - held_after),
        moves=moves,
    )


def _give_to_least_loaded(draft: _Draft, capacity: Mapping[str, int]) -> None:
    heap = [
        (len(draft.kept[i]), i)
        for i in draft.eligible
        if len(draft.kept[i]) < capacity[i]
    ]
    heapq.heapify(heap)
    for index in draft.free:
        if not heap:
            break
        load, subscriber_id = heapq.heappop(heap)
        draft.kept[subscriber_id].append(index)
        draft.given.append(index)
        if len(draft.kept[subscriber_id]) < capacity[subscriber_id]:
            heapq.heappush(heap, (load + 1, subscriber_id))


def balanced(state: GroupState, move_budget: int) -> GroupPlan:
    """Every eligible subscriber holds floor(S/N) or ceil(S/N), with the fewest moves.

    The ceil goes to the subscribers that hold the most already (ties by id); each
    subscriber above its quota gives up its most recently allocated sources, at most
    ``move_budget`` in all, most loaded first; free sources go to the least loaded.
    """
    draft = _draft(state)
    if not draft.eligible:
        return _plan(state, draft, 0)
    base, extra = divmod(len(draft.target), len(draft.eligible))
    ranked = sorted(draft.eligible, key=lambda i: (-len(draft.kept[i]), i))
    quota = {i: base + (1 if rank < extra else 0) for rank, i in enumerate(ranked)}
    moves = 0
    for subscriber_id in ranked:
        excess = len(draft.kept[subscriber_id]) - quota[subscriber_id]
        give_up = max(0, min(excess, move_budget - moves))
        if give_up:
            del draft.kept[subscriber_id][-give_up:]
            moves += give_up
    _give_to_least_loaded(draft, quota)
    return _plan(state, draft, moves)


def fill(state: GroupState, move_budget: int) -> GroupPlan:
    """logicblocks' behaviour: allocate only what nobody holds; never move a source."""
    draft = _draft(state)
    unlimited = {i: len(draft.target) for i in draft.eligible}
    _give_to_least_loaded(draft, unlimited)
    return _plan(state, draft, 0)


STRATEGIES: Mapping[str, AllocationStrategy] = {"balanced": balanced, "fill": fill}


def allocation_strategy(name: str) -> AllocationStrategy:
    """The strategy called ``name``; a clear error naming the choices otherwise."""
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ValueError(
            f"unknown allocation strategy {name!r}: use one of {', '.join(STRATEGIES)}"
        ) from None


def plan_allocation(
    groups: Iterable[GroupState],
    strategy: AllocationStrategy,
    max_moves: int,
) -> list[GroupPlan]:
    """Plan every group, moving at most ``max_moves`` sources at a time in all.

    Sources still unreleased from earlier moves count against the bound, so no more
    than ``max_moves`` sources are ever between two holders. Groups are planned in
    name order.
    """
    states = sorted(groups, key=lambda state: state.group)
    budget = max(0, max_moves - sum(len(state.unreleased) for state in states))
    plans = []
    for state in states:
        plan = strategy(state, budget)
        budget -= plan.moves
        plans.append(plan)
    return plans
