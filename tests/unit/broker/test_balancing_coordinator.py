"""The balancing coordinator's distributions over in-memory state stores.

Each test drives ``distribute()`` by hand with a clock it controls; the stores are
logicblocks' in-memory ones, shared the way ``InMemoryClusterState`` shares them.
"""

import asyncio
from collections.abc import Collection, Sequence, Set
from dataclasses import replace
from datetime import timedelta

import pytest
from logicblocks.event.persistence.postgres import ConnectionSettings
from logicblocks.event.processing.broker import DistributedEventBrokerSettings
from logicblocks.event.types import CategoryIdentifier

from eventcomposition import InMemoryClusterState
from eventcomposition.broker.allocation import (
    AllocationStrategy,
    Source,
    balanced,
    fill,
)
from eventcomposition.broker.balancing import (
    BalancingCoordinatorFactory,
    BalancingEventSubscriptionCoordinator,
    ReleaseCheck,
)
from eventcomposition.broker.leadership import (
    CheckedPostgresLockManager,
    LeadershipLostError,
)
from eventcomposition.metrics import NodeMetrics
from eventcomposition.testing.capture import CapturingSubscriber
from eventcomposition.testing.waiting import wait_until

SOURCES: list[Source] = [CategoryIdentifier(f"orders-{n:02d}") for n in range(12)]
GRACE = timedelta(seconds=3)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class ReleasedWhenTold(ReleaseCheck):
    """A release check whose answers the test sets."""

    def __init__(self) -> None:
        self.released_sources: set[Source] = set()
        self.asked: list[tuple[str, set[Source]]] = []

    async def released(self, group: str, sources: Collection[Source]) -> Set[Source]:
        self.asked.append((group, set(sources)))
        return self.released_sources & set(sources)


class RecordedMetrics(NodeMetrics):
    """Records what the coordinator reports, in order."""

    def __init__(self) -> None:
        self.allocation_changes: list[int] = []
        self.leadership: list[bool] = []

    def allocation_changed(self, changes: int = 1) -> None:
        self.allocation_changes.append(changes)

    def leadership_changed(self, leading: bool) -> None:
        self.leadership.append(leading)


class World:
    def __init__(
        self,
        release_check: ReleaseCheck | None = None,
        *,
        strategy: AllocationStrategy = balanced,
        max_moves_per_distribution: int = 32,
        metrics: NodeMetrics | None = None,
    ) -> None:
        self.state = InMemoryClusterState()
        self.clock = Clock()
        self.subscribers: dict[str, CapturingSubscriber] = {}
        self.coordinator = self.new_coordinator(
            release_check, strategy, max_moves_per_distribution, metrics
        )

    def new_coordinator(
        self,
        release_check: ReleaseCheck | None = None,
        strategy: AllocationStrategy = balanced,
        max_moves_per_distribution: int = 32,
        metrics: NodeMetrics | None = None,
    ) -> BalancingEventSubscriptionCoordinator:
        return BalancingEventSubscriptionCoordinator(
            node_id="coordinator",
            lock_manager=self.state.lock_manager,
            subscriber_state_store=self.state.subscriber_state_store("coordinator"),
            subscription_state_store=self.state.subscription_state_store("coordinator"),
            strategy=strategy,
            max_moves_per_distribution=max_moves_per_distribution,
            release_check=release_check,
            release_grace=GRACE,
            clock=self.clock,
            metrics=metrics,
        )

    async def join(self, name: str, requests: Sequence[Source] = SOURCES) -> None:
        subscriber = CapturingSubscriber("totals", name, requests)
        self.subscribers[name] = subscriber
        await self.state.subscriber_state_store(f"node-{name}").add(subscriber)

    async def leave(self, name: str) -> None:
        subscriber = self.subscribers.pop(name)
        await self.state.subscriber_state_store(f"node-{name}").remove(subscriber)

    def held(self) -> dict[str, int]:
        return {s.id: len(s.event_sources) for s in self.state.subscriptions()}

    async def distribute_after(self, seconds: float = 0.1) -> None:
        self.clock.now += seconds
        await self.coordinator.distribute()


async def test_a_joining_subscriber_gets_its_share_after_the_revoked_are_released() -> (
    None
):
    world = World()
    await world.join("a")
    await world.join("b")
    await world.distribute_after()
    assert world.held() == {"a": 6, "b": 6}

    await world.join("c")
    await world.distribute_after()
    assert world.held() == {"a": 4, "b": 4, "c": 0}
    assert len(world.coordinator.moving()) == 4
    assert {m.holder for m in world.coordinator.moving()} == {"a", "b"}

    await world.distribute_after(GRACE.total_seconds() / 2)
    assert world.held()["c"] == 0

    await world.distribute_after(GRACE.total_seconds() / 2)
    assert world.held() == {"a": 4, "b": 4, "c": 4}
    assert world.coordinator.moving() == []
    # 12 first allocated, then 4 revoked and 4 allocated again.
    assert world.coordinator.allocation_changes_total == 20


async def test_a_release_check_decides_when_a_revoked_source_moves_on() -> None:
    check = ReleasedWhenTold()
    world = World(release_check=check)
    await world.join("a")
    await world.distribute_after()
    await world.join("b")
    await world.distribute_after()
    moving = {m.source for m in world.coordinator.moving()}
    assert len(moving) == 6

    await world.distribute_after(60)
    assert world.held() == {"a": 6, "b": 0}
    assert check.asked[-1] == ("totals", moving)

    check.released_sources = set(list(moving)[:2])
    await world.distribute_after()
    assert world.held() == {"a": 6, "b": 2}
    assert len(world.coordinator.moving()) == 4


async def test_sources_of_a_holder_that_left_move_on_at_once() -> None:
    world = World()
    await world.join("a")
    await world.join("b")
    await world.distribute_after()
    await world.join("c")
    await world.distribute_after()
    assert world.held()["c"] == 0

    await world.leave("a")
    await world.leave("b")
    await world.distribute_after()

    assert world.held() == {"c": 12}


async def test_moves_per_distribution_are_bounded() -> None:
    world = World(max_moves_per_distribution=1)
    await world.join("a")
    await world.distribute_after()
    await world.join("b")

    held_by_b = []
    for _ in range(8):
        await world.distribute_after(GRACE.total_seconds())
        assert len(world.coordinator.moving()) <= 1
        held_by_b.append(world.held()["b"])

    assert held_by_b == [0, 1, 2, 3, 4, 5, 6, 6]


async def test_a_new_leader_waits_before_allocating_what_it_finds_unheld() -> None:
    world = World()
    await world.join("a")
    await world.join("b")
    await world.distribute_after()
    # The leader revokes three of b's sources, then loses the lead.
    [b] = [s for s in world.state.subscriptions() if s.id == "b"]
    store = world.state.subscription_state_store("coordinator")
    await store.replace(replace(b, event_sources=list(b.event_sources)[3:]))
    world.coordinator = world.new_coordinator()

    await world.distribute_after()
    assert world.held() == {"a": 6, "b": 3}
    assert [m.holder for m in world.coordinator.moving()] == [None] * 3

    await world.distribute_after(GRACE.total_seconds())
    assert world.held() == {"a": 6, "b": 6}


async def test_fill_never_moves_a_held_source() -> None:
    world = World(strategy=fill)
    await world.join("a")
    await world.distribute_after()
    await world.join("b")
    for _ in range(3):
        await world.distribute_after(GRACE.total_seconds())

    assert world.held() == {"a": 12, "b": 0}


async def test_nothing_is_written_when_nothing_changes() -> None:
    world = World()
    await world.join("a")
    await world.distribute_after()
    before = world.coordinator.allocation_changes_total

    await world.distribute_after()

    assert world.coordinator.allocation_changes_total == before == 12


async def test_a_lost_postgres_lock_stops_the_distribution() -> None:
    lock_manager = CheckedPostgresLockManager(
        connection_settings=ConnectionSettings(
            host="127.0.0.1", port=1, dbname="none", user="none", password="none"
        )
    )
    state = InMemoryClusterState()
    coordinator = BalancingEventSubscriptionCoordinator(
        node_id="coordinator",
        lock_manager=lock_manager,
        subscriber_state_store=state.subscriber_state_store("coordinator"),
        subscription_state_store=state.subscription_state_store("coordinator"),
    )

    with pytest.raises(LeadershipLostError):
        await coordinator.distribute()


def test_settings_give_the_timings_and_the_grace() -> None:
    state = InMemoryClusterState()
    coordinator = BalancingEventSubscriptionCoordinator.from_settings(
        "node",
        state.lock_manager,
        state.subscriber_state_store("node"),
        state.subscription_state_store("node"),
        DistributedEventBrokerSettings(
            observer_synchronisation_interval=timedelta(seconds=2)
        ),
    )

    assert coordinator.release_grace == timedelta(seconds=3)


def test_a_bound_below_one_is_refused() -> None:
    state = InMemoryClusterState()
    with pytest.raises(ValueError, match=r"broker\.max_moves_per_distribution"):
        BalancingEventSubscriptionCoordinator(
            "node",
            state.lock_manager,
            state.subscriber_state_store("node"),
            state.subscription_state_store("node"),
            max_moves_per_distribution=0,
        )


async def test_each_distribution_that_changes_allocations_is_recorded() -> None:
    metrics = RecordedMetrics()
    world = World(metrics=metrics)
    await world.join("a")
    await world.join("b")
    await world.distribute_after()
    await world.distribute_after()
    assert metrics.allocation_changes == [12]

    await world.join("c")
    await world.distribute_after()
    await world.distribute_after(GRACE.total_seconds())

    # 4 revoked, then the same 4 allocated to c; unchanged distributions say nothing.
    assert metrics.allocation_changes == [12, 4, 4]
    assert sum(metrics.allocation_changes) == world.coordinator.allocation_changes_total


async def test_gaining_and_losing_the_lead_is_recorded() -> None:
    metrics = RecordedMetrics()
    state = InMemoryClusterState()
    # The factory, as the container builds it, passes the metrics on.
    coordinator = BalancingCoordinatorFactory(metrics=metrics)(
        node_id="coordinator",
        lock_manager=state.lock_manager,
        subscriber_state_store=state.subscriber_state_store("coordinator"),
        subscription_state_store=state.subscription_state_store("coordinator"),
        settings=DistributedEventBrokerSettings(
            coordinator_distribution_interval=timedelta(milliseconds=10),
            coordinator_leadership_max_duration=timedelta(milliseconds=30),
            coordinator_leadership_attempt_interval=timedelta(milliseconds=10),
        ),
    )
    task = asyncio.create_task(coordinator.coordinate())
    try:
        # Each term ends after its max duration; the lock is taken again.
        await wait_until(
            lambda: metrics.leadership[:4] == [True, False, True, False],
            timeout=5,
            description="two terms of leadership recorded",
        )
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    assert metrics.leadership[-1] is False
    assert len(metrics.leadership) % 2 == 0


async def test_a_cancelled_leader_records_that_it_no_longer_leads() -> None:
    metrics = RecordedMetrics()
    state = InMemoryClusterState()
    coordinator = BalancingEventSubscriptionCoordinator(
        node_id="coordinator",
        lock_manager=state.lock_manager,
        subscriber_state_store=state.subscriber_state_store("coordinator"),
        subscription_state_store=state.subscription_state_store("coordinator"),
        metrics=metrics,
    )
    task = asyncio.create_task(coordinator.coordinate())
    await wait_until(
        lambda: metrics.leadership == [True], timeout=5, description="the lead taken"
    )

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert metrics.leadership == [True, False]
