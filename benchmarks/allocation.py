"""6. Allocation at scale, by simulation: the cost of one distribution, and the moves.

One group of N subscribers over S sources, in memory: logicblocks' in-memory
subscriber and subscription state stores (shared as ``InMemoryClusterState`` shares
them) and the balancing coordinator. For each size it times:

- a steady distribution (everything balanced, nothing to write);
- the distribution after a subscriber joins (plans and writes the revocations);
- the distribution after a subscriber leaves (its sources go to the others);

and counts the moves (sources taken from a live holder) and the distributions each
change takes to settle with the default bound on moves. Every subscriber's request
is its own tuple of shared identifiers (as in memory); one more run at the target
size gives every subscriber its own identifier objects, as a PostgreSQL store
decoding rows does (comparing those costs a Python call per source).

Target: 100 subscribers over 1,000 sources in under 50 ms per distribution, growing
no worse than linearithmically in the input.
"""

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from logicblocks.event.processing.broker import EventSubscriber, EventSubscriberHealth
from logicblocks.event.sources import EventSource
from logicblocks.event.types import (
    CategoryIdentifier,
    EventSourceIdentifier,
    StoredEvent,
)

from eventcomposition import InMemoryClusterState
from eventcomposition.broker.balancing import (
    DEFAULT_MAX_MOVES_PER_DISTRIBUTION,
    BalancingEventSubscriptionCoordinator,
)

from .common import BenchContext, Json, Spread, say, table

NAME = "allocation"
GROUP = "bench"
TARGET_SECONDS = 0.050


class RequestingSubscriber(EventSubscriber[StoredEvent]):
    """Only what the state stores read: a group, an id and the requests."""

    def __init__(self, id: str, requests: Sequence[EventSourceIdentifier]) -> None:
        self._id = id
        self._requests = tuple(requests)

    @property
    def group(self) -> str:
        return GROUP

    @property
    def id(self) -> str:
        return self._id

    @property
    def subscription_requests(self) -> Sequence[EventSourceIdentifier]:
        return self._requests

    def health(self) -> EventSubscriberHealth:
        return EventSubscriberHealth.HEALTHY

    async def accept(
        self, source: EventSource[EventSourceIdentifier, StoredEvent]
    ) -> None:
        pass

    async def withdraw(
        self, source: EventSource[EventSourceIdentifier, StoredEvent]
    ) -> None:
        pass


class Simulation:
    def __init__(
        self, subscribers: int, sources: int, *, decoded: bool = False
    ) -> None:
        self.decoded = decoded
        self.state = InMemoryClusterState()
        self.sources = [CategoryIdentifier(f"c-{n:05d}") for n in range(sources)]
        self.store = self.state.subscriber_state_store("bench")
        self.coordinator = BalancingEventSubscriptionCoordinator(
            node_id="coordinator",
            lock_manager=self.state.lock_manager,
            subscriber_state_store=self.store,
            subscription_state_store=self.state.subscription_state_store("bench"),
            subscriber_max_time_since_last_seen=timedelta(hours=1),
            # Revoked sources count as released at the next distribution.
            release_grace=timedelta(0),
        )
        self.members = [self.subscriber(n) for n in range(subscribers)]

    def subscriber(self, n: int) -> RequestingSubscriber:
        if self.decoded:
            requests = [CategoryIdentifier(s.category) for s in self.sources]
            return RequestingSubscriber(f"s-{n:05d}", requests)
        return RequestingSubscriber(f"s-{n:05d}", list(self.sources))

    def holders(self) -> dict[EventSourceIdentifier, str]:
        return {
            source: subscription.id
            for subscription in self.state.subscriptions()
            for source in subscription.event_sources
        }

    async def timed_distribution(self) -> float:
        started = time.perf_counter()
        await self.coordinator.distribute()
        return time.perf_counter() - started

    async def settle(self) -> tuple[int, list[float]]:
        """Distribute until nothing changes: the distributions it took and times."""
        times = []
        while True:
            before = self.coordinator.allocation_changes_total
            times.append(await self.timed_distribution())
            if self.coordinator.allocation_changes_total == before:
                return len(times) - 1, times


@dataclass
class Measured:
    result: Json
    steady: Spread
    join: Spread
    leave: Spread


async def measure(
    subscribers: int, sources: int, cycles: int, *, decoded: bool = False
) -> Measured:
    """Steady distributions, then ``cycles`` of a join and the newcomer's leave."""
    sim = Simulation(subscribers, sources, decoded=decoded)
    for member in sim.members:
        await sim.store.add(member)
    await sim.settle()
    steady = [await sim.timed_distribution() for _ in range(cycles * 2)]
    join_first, leave_first = [], []
    for cycle in range(cycles):
        before = sim.holders()
        newcomer = sim.subscriber(subscribers + cycle)
        await sim.store.add(newcomer)
        join_distributions, times = await sim.settle()
        join_first.append(times[0])
        joined = sim.holders()
        await sim.store.remove(newcomer)
        leave_distributions, times = await sim.settle()
        leave_first.append(times[0])
        after = sim.holders()
    result = {
        "subscribers": subscribers,
        "sources": sources,
        "decoded_requests": decoded,
        "steady_seconds": Spread.of(steady).as_json(),
        "join_first_distribution_seconds": Spread.of(join_first).as_json(),
        "join_moves": sum(1 for s, h in before.items() if joined.get(s) != h),
        "join_fair_share": sources // (subscribers + 1),
        "join_distributions": join_distributions,
        "leave_first_distribution_seconds": Spread.of(leave_first).as_json(),
        "leave_moves": sum(
            1 for s, h in joined.items() if h != newcomer.id and after.get(s) != h
        ),
        "leave_reassigned": sum(1 for h in joined.values() if h == newcomer.id),
        "leave_distributions": leave_distributions,
    }
    return Measured(
        result, Spread.of(steady), Spread.of(join_first), Spread.of(leave_first)
    )


def growth(measured: Sequence[Measured]) -> list[list[object]]:
    """How the cost grows along each axis, beside n log n along it.

    Each row's cost (its fastest steady distribution, the least disturbed on a
    shared machine) over the cost with the same subscribers and the fewest sources,
    and over the cost with the same sources and the fewest subscribers.
    """

    def n_log_n(n: int) -> float:
        return n * math.log(n)

    def cost(m: Measured) -> float:
        return m.steady.minimum

    fewest_sources = min(m.result["sources"] for m in measured)
    fewest_subscribers = min(m.result["subscribers"] for m in measured)
    by_size = {(m.result["subscribers"], m.result["sources"]): m for m in measured}
    rows: list[list[object]] = []
    for m in measured:
        subscribers, sources = m.result["subscribers"], m.result["sources"]
        along_sources = by_size[(subscribers, fewest_sources)]
        along_subscribers = by_size[(fewest_subscribers, sources)]
        rows.append(
            [
                subscribers,
                sources,
                f"{cost(m) / cost(along_sources):.1f}x",
                f"{n_log_n(sources) / n_log_n(fewest_sources):.1f}x",
                f"{cost(m) / cost(along_subscribers):.1f}x",
                f"{n_log_n(subscribers) / n_log_n(fewest_subscribers):.1f}x",
            ]
        )
    return rows


async def run(ctx: BenchContext) -> None:
    subscriber_counts = [10, 100] if ctx.quick else [10, 100, 1_000]
    source_counts = [100, 1_000] if ctx.quick else [100, 1_000, 10_000]
    cycles = 2 if ctx.quick else 5
    say(
        f"\n6. allocation by simulation: one group, in memory, bound "
        f"{DEFAULT_MAX_MOVES_PER_DISTRIBUTION} moves per distribution"
    )
    measured = [
        await measure(subscribers, sources, cycles)
        for subscribers in subscriber_counts
        for sources in source_counts
    ]
    decoded = await measure(100, 1_000, cycles, decoded=True)
    rows = [
        [
            m.result["subscribers"],
            f"{m.result['sources']}{' (decoded)' if m is decoded else ''}",
            _milliseconds(m.steady),
            _milliseconds(m.join),
            f"{m.result['join_moves']} (fair {m.result['join_fair_share']})",
            m.result["join_distributions"],
            _milliseconds(m.leave),
            f"{m.result['leave_moves']} ({m.result['leave_reassigned']} reassigned)",
            m.result["leave_distributions"],
        ]
        for m in [*measured, decoded]
    ]
    say(
        table(
            "one distribution in ms (min / median / max): steady, and the first "
            "after a join and after a leave; the moves each causes",
            [
                "subscribers",
                "sources",
                "steady",
                "join: 1st",
                "join moves",
                "distributions",
                "leave: 1st",
                "leave moves",
                "distributions",
            ],
            rows,
        )
    )
    say(
        table(
            "growth of the cost along each axis, beside n log n along it",
            [
                "subscribers",
                "sources",
                "cost / fewest sources",
                "S log S",
                "cost / fewest subscribers",
                "N log N",
            ],
            growth(measured),
        )
    )
    targets = [
        m
        for m in [*measured, decoded]
        if (m.result["subscribers"], m.result["sources"]) == (100, 1_000)
    ]
    worst = max(max(m.steady.median, m.join.median, m.leave.median) for m in targets)
    verdict = worst < TARGET_SECONDS
    say(
        f"target: 100 subscribers over 1,000 sources, slowest median distribution "
        f"{worst * 1000:.1f} ms ({'met' if verdict else 'MISSED'}: < 50 ms)"
    )
    ctx.save(
        NAME,
        {
            "max_moves_per_distribution": DEFAULT_MAX_MOVES_PER_DISTRIBUTION,
            "target_seconds": TARGET_SECONDS,
            "target_met": verdict,
            "results": [m.result for m in [*measured, decoded]],
        },
    )


def _milliseconds(spread: Spread) -> str:
    return Spread(
        spread.minimum * 1000,
        spread.median * 1000,
        spread.maximum * 1000,
        spread.count,
    ).text(".1f")
