"""A coordinator that rebalances sources as subscribers join and leave.

logicblocks' coordinator only allocates sources that nobody holds, so a node that
joins a running cluster gets nothing. This one plans each distribution with an
allocation strategy (``allocation.balanced`` by default) and hands sources over in
stages: a source taken from its holder is allocated to its new subscriber only in a
later distribution, once it is released: when a ``ReleaseCheck`` says so (claims),
or without one after ``release_grace``, or at once when the old holder's heartbeat
has aged out.

Which sources are between holders is known to the leader only. A coordinator that
takes the lead treats the requested sources it finds unheld in an already allocated
group as moving since that moment, as it cannot tell them from its predecessor's
revocations.
"""

import asyncio
import time
from collections.abc import Callable, Collection, Iterable, Sequence, Set
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Protocol

import structlog
from logicblocks.event.processing import LockManager, ProcessStatus
from logicblocks.event.processing.broker import (
    DistributedEventBrokerSettings as LogicblocksDistributedEventBrokerSettings,
)
from logicblocks.event.processing.broker.strategies.distributed import (
    EventSubscriberState,
    EventSubscriberStateStore,
    EventSubscriptionCoordinator,
    EventSubscriptionKey,
    EventSubscriptionState,
    EventSubscriptionStateChange,
    EventSubscriptionStateChangeType,
    EventSubscriptionStateStore,
)
from structlog.types import FilteringBoundLogger

from ..metrics import NodeMetrics
from .allocation import (
    AllocationStrategy,
    GroupPlan,
    GroupState,
    Source,
    SubscriberRequest,
    balanced,
    plan_allocation,
    target_requests,
)
from .leader import COORDINATOR_LOCK_NAME
from .leadership import verify_leadership

# A join into a cluster with up to 32 sources per node completes in one hand-over
# (two distributions); beyond that at most 32 sources are paused (and replay from
# their checkpoints) at any moment, however large the cluster.
DEFAULT_MAX_MOVES_PER_DISTRIBUTION = 32

_Change = EventSubscriptionStateChange
_ChangeType = EventSubscriptionStateChangeType


class ReleaseCheck(Protocol):
    """Tells which revoked sources their old holder no longer processes."""

    async def released(self, group: str, sources: Collection[Source]) -> Set[Source]:
        """The subset of ``sources`` (revoked in ``group``) nobody holds any more."""
        ...


@dataclass(frozen=True)
class MovingSource:
    """A source revoked from its holder and not yet allocated to another.

    ``holder`` is the subscriber id it was taken from, or ``None`` when it was found
    unheld as this coordinator took the lead; ``since`` is on the coordinator's
    monotonic clock.
    """

    group: str
    source: Source
    holder: str | None
    since: float


def default_release_grace(observer_synchronisation_interval: timedelta) -> timedelta:
    """One synchronisation interval for the holder to notice, plus half as margin."""
    return observer_synchronisation_interval * 1.5


def group_states(
    subscribers: Iterable[EventSubscriberState],
    subscriptions: Iterable[EventSubscriptionState],
) -> list[GroupState]:
    """Each group's live subscribers and what they hold, as strategies take them.

    ``subscribers`` are the live ones; subscriptions of any other subscriber are left
    out (their sources are free).
    """
    requests: dict[str, list[SubscriberRequest]] = {}
    for subscriber in subscribers:
        requests.setdefault(subscriber.group, []).append(
            SubscriberRequest(subscriber.id, tuple(subscriber.subscription_requests))
        )
    holdings: dict[str, dict[str, Sequence[Source]]] = {}
    for subscription in subscriptions:
        if subscription.group in requests:
            holdings.setdefault(subscription.group, {})[subscription.id] = tuple(
                subscription.event_sources
            )
    return [
        GroupState(group, members, holdings.get(group, {}))
        for group, members in requests.items()
    ]


class BalancingEventSubscriptionCoordinator(EventSubscriptionCoordinator):
    """logicblocks' coordinator contract with staged, balanced allocation."""

    def __init__(
        self,
        node_id: str,
        lock_manager: LockManager,
        subscriber_state_store: EventSubscriberStateStore,
        subscription_state_store: EventSubscriptionStateStore,
        logger: FilteringBoundLogger | None = None,
        subscriber_max_time_since_last_seen: timedelta = timedelta(seconds=60),
        distribution_interval: timedelta = timedelta(seconds=20),
        leadership_max_duration: timedelta = timedelta(minutes=15),
        leadership_attempt_interval: timedelta = timedelta(seconds=5),
        *,
        strategy: AllocationStrategy = balanced,
        max_moves_per_distribution: int = DEFAULT_MAX_MOVES_PER_DISTRIBUTION,
        release_check: ReleaseCheck | None = None,
        release_grace: timedelta | None = None,
        clock: Callable[[], float] = time.monotonic,
        metrics: NodeMetrics | None = None,
    ) -> None:
        if max_moves_per_distribution < 1:
            raise ValueError(
                "max_moves_per_distribution must be at least 1, got "
                f"{max_moves_per_distribution}: set broker.max_moves_per_distribution "
                "to a positive number"
            )
        self._node_id = node_id
        self._lock_manager = lock_manager
        self._subscriber_state_store = subscriber_state_store
        self._subscription_state_store = subscription_state_store
        self._logger: FilteringBoundLogger = (
            logger or structlog.get_logger("eventcomposition.broker.coordinator")
        ).bind(node=node_id)
        self._max_time_since_last_seen = subscriber_max_time_since_last_seen
        self._distribution_interval = distribution_interval
        self._leadership_max_duration = leadership_max_duration
        self._leadership_attempt_interval = leadership_attempt_interval
        self._strategy = strategy
        self._max_moves = max_moves_per_distribution
        self._release_check = release_check
        # logicblocks' default synchronisation interval unless told otherwise.
        if release_grace is None:
            release_grace = default_release_grace(timedelta(seconds=20))
        self._release_grace = release_grace.total_seconds()
        self._clock = clock
        self._metrics = metrics if metrics is not None else NodeMetrics()
        self._status = ProcessStatus.INITIALISED
        self._moving: dict[tuple[str, Source], MovingSource] = {}
        self._new_term = True
        self._allocation_changes = 0

    @classmethod
    def from_settings(
        cls,
        node_id: str,
        lock_manager: LockManager,
        subscriber_state_store: EventSubscriberStateStore,
        subscription_state_store: EventSubscriptionStateStore,
        settings: LogicblocksDistributedEventBrokerSettings,
        *,
        strategy: AllocationStrategy = balanced,
        max_moves_per_distribution: int = DEFAULT_MAX_MOVES_PER_DISTRIBUTION,
        release_check: ReleaseCheck | None = None,
        metrics: NodeMetrics | None = None,
    ) -> "BalancingEventSubscriptionCoordinator":
        """The coordinator with the broker settings' timings."""
        return cls(
            node_id=node_id,
            lock_manager=lock_manager,
            subscriber_state_store=subscriber_state_store,
            subscription_state_store=subscription_state_store,
            subscriber_max_time_since_last_seen=settings.coordinator_subscriber_max_time_since_last_seen,
            distribution_interval=settings.coordinator_distribution_interval,
            leadership_max_duration=settings.coordinator_leadership_max_duration,
            leadership_attempt_interval=settings.coordinator_leadership_attempt_interval,
            strategy=strategy,
            max_moves_per_distribution=max_moves_per_distribution,
            release_check=release_check,
            release_grace=default_release_grace(
                settings.observer_synchronisation_interval
            ),
            metrics=metrics,
        )

    @property
    def status(self) -> ProcessStatus:
        return self._status

    @property
    def release_grace(self) -> timedelta:
        """How long a revoked source waits when no release check answers for it."""
        return timedelta(seconds=self._release_grace)

    @property
    def allocation_changes_total(self) -> int:
        """Sources allocated to or revoked from a subscription since start."""
        return self._allocation_changes

    def moving(self) -> list[MovingSource]:
        """The sources revoked from a holder and not yet allocated again."""
        return sorted(self._moving.values(), key=lambda m: (m.group, repr(m.source)))

    async def coordinate(self) -> None:
        await self._logger.ainfo(
            _event("starting"),
            distribution_interval_seconds=self._distribution_interval.total_seconds(),
        )
        self._status = ProcessStatus.WAITING
        try:
            while True:
                async with self._lock_manager.try_lock(COORDINATOR_LOCK_NAME) as lock:
                    if lock.locked:
                        self._metrics.leadership_changed(True)
                        try:
                            await self._lead()
                        finally:
                            self._metrics.leadership_changed(False)
                self._status = ProcessStatus.WAITING
                await asyncio.sleep(self._leadership_attempt_interval.total_seconds())
        except asyncio.CancelledError:
            self._status = ProcessStatus.STOPPED
            await self._logger.ainfo(_event("stopped"))
            raise
        except BaseException:
            self._status = ProcessStatus.ERRORED
            await self._logger.aexception(_event("failed"))
            raise

    async def _lead(self) -> None:
        await self._logger.ainfo(_event("running"))
        self._status = ProcessStatus.RUNNING
        self._moving.clear()
        self._new_term = True
        deadline = time.monotonic() + self._leadership_max_duration.total_seconds()
        while time.monotonic() <= deadline:
            await self.distribute()
            await asyncio.sleep(self._distribution_interval.total_seconds())

    async def distribute(self) -> None:
        await verify_leadership(self._lock_manager)
        subscriptions = await self._subscription_state_store.list()
        subscribers = await self._subscriber_state_store.list(
            max_time_since_last_seen=self._max_time_since_last_seen
        )
        live = {subscriber.subscription_key: subscriber for subscriber in subscribers}
        current = {s.key: s for s in subscriptions if s.key in live}
        changes = [
            _Change(_ChangeType.REMOVE, s) for s in subscriptions if s.key not in live
        ]
        now = self._clock()
        groups = group_states(subscribers, current.values())
        if self._new_term:
            self._adopt_unheld(groups, subscriptions, now)
            self._new_term = False
        unreleased = await self._unreleased(groups, live.keys(), now)
        groups = [
            replace(state, unreleased=unreleased.get(state.group, frozenset()))
            for state in groups
        ]
        plans = plan_allocation(groups, self._strategy, self._max_moves)
        self._forget_unrequested(plans)
        for plan in plans:
            changes.extend(_changes(plan, current, live))
            for source in plan.assigned:
                self._moving.pop((plan.group, source), None)
            holders = _holders(current.values(), plan.group, plan.moving)
            for source in plan.moving:
                self._moving[(plan.group, source)] = MovingSource(
                    plan.group, source, holders.get(source), now
                )
        if changes:
            await self._subscription_state_store.apply(changes=changes)
            counted = _count(changes, {**current, **_removed(changes)})
            self._allocation_changes += counted
            self._metrics.allocation_changed(counted)
            await self._logger.ainfo(
                _event("distribution.changed"),
                changed_subscriptions=len(changes),
                changed_sources=counted,
                moving=len(self._moving),
            )
        await self._logger.adebug(
            _event("distribution.complete"),
            changed_subscriptions=len(changes),
            moving=len(self._moving),
        )

    def _adopt_unheld(
        self,
        groups: Sequence[GroupState],
        subscriptions: Sequence[EventSubscriptionState],
        now: float,
    ) -> None:
        # Sources in a dead subscriber's subscription are released; sources in no
        # subscription of an allocated group may be a predecessor's revocations.
        in_store: dict[str, set[Source]] = {}
        for subscription in subscriptions:
            in_store.setdefault(subscription.group, set()).update(
                subscription.event_sources
            )
        for state in groups:
            if state.group not in in_store:
                continue
            sources, _ = target_requests(state.subscribers)
            for source in set(sources) - in_store[state.group]:
                self._moving[(state.group, source)] = MovingSource(
                    state.group, source, None, now
                )

    async def _unreleased(
        self,
        groups: Sequence[GroupState],
        live: Collection[EventSubscriptionKey],
        now: float,
    ) -> dict[str, frozenset[Source]]:
        if not self._moving:
            return {}
        held = {
            (state.group, source)
            for state in groups
            for sources in state.holdings.values()
            for source in sources
        }
        waiting: dict[str, list[MovingSource]] = {}
        for key, moving in list(self._moving.items()):
            holder_gone = moving.holder is not None and (
                EventSubscriptionKey(moving.group, moving.holder) not in live
            )
            if key in held or holder_gone:
                del self._moving[key]
            else:
                waiting.setdefault(moving.group, []).append(moving)
        unreleased: dict[str, frozenset[Source]] = {}
        for group, entries in waiting.items():
            if self._release_check is not None:
                sources = [entry.source for entry in entries]
                released = await self._release_check.released(group, sources)
            else:
                released = {
                    entry.source
                    for entry in entries
                    if now - entry.since >= self._release_grace
                }
            for source in released:
                self._moving.pop((group, source), None)
            unreleased[group] = frozenset(
                entry.source for entry in entries if entry.source not in released
            )
        return unreleased

    def _forget_unrequested(self, plans: Sequence[GroupPlan]) -> None:
        # A source nobody asks for any more is not moving anywhere.
        if not self._moving:
            return
        requested = {(plan.group, source) for plan in plans for source in plan.sources}
        for key in [key for key in self._moving if key not in requested]:
            del self._moving[key]


def _event(name: str) -> str:
    # logicblocks' coordinator's log event names, so that logs read the same
    # whichever coordinator leads.
    return f"event.processing.broker.coordinator.{name}"


@dataclass(frozen=True)
class BalancingCoordinatorFactory:
    """A ``CoordinatorFactory`` of balancing coordinators, for the broker builders.

    ``strategy`` is ``balanced`` (the default) or ``fill`` (logicblocks' behaviour:
    only sources nobody holds are allocated).
    """

    strategy: AllocationStrategy = balanced
    max_moves_per_distribution: int = DEFAULT_MAX_MOVES_PER_DISTRIBUTION
    release_check: ReleaseCheck | None = None
    metrics: NodeMetrics | None = None

    def __call__(
        self,
        *,
        node_id: str,
        lock_manager: LockManager,
        subscriber_state_store: EventSubscriberStateStore,
        subscription_state_store: EventSubscriptionStateStore,
        settings: LogicblocksDistributedEventBrokerSettings,
    ) -> EventSubscriptionCoordinator:
        return BalancingEventSubscriptionCoordinator.from_settings(
            node_id,
            lock_manager,
            subscriber_state_store,
            subscription_state_store,
            settings,
            strategy=self.strategy,
            max_moves_per_distribution=self.max_moves_per_distribution,
            release_check=self.release_check,
            metrics=self.metrics,
        )


def _holders(
    subscriptions: Iterable[EventSubscriptionState],
    group: str,
    sources: Set[Source],
) -> dict[Source, str]:
    """Who held each of ``sources`` (of ``group``) before this distribution."""
    if not sources:
        return {}
    return {
        source: subscription.id
        for subscription in subscriptions
        if subscription.group == group
        for source in subscription.event_sources
        if source in sources
    }


def _changes(
    plan: GroupPlan,
    current: dict[EventSubscriptionKey, EventSubscriptionState],
    live: dict[EventSubscriptionKey, EventSubscriberState],
) -> list[EventSubscriptionStateChange]:
    changes = []
    for subscriber_id, sources in sorted(plan.holdings.items()):
        key = EventSubscriptionKey(plan.group, subscriber_id)
        existing = current.get(key)
        if subscriber_id not in plan.eligible:
            if existing is not None:
                changes.append(_Change(_ChangeType.REMOVE, existing))
            continue
        if existing is not None and tuple(existing.event_sources) == sources:
            continue
        subscription = EventSubscriptionState(
            group=plan.group,
            id=subscriber_id,
            node_id=live[key].node_id,
            event_sources=list(sources),
        )
        kind = _ChangeType.ADD if existing is None else _ChangeType.REPLACE
        changes.append(_Change(kind, subscription))
    return changes


def _removed(
    changes: Sequence[EventSubscriptionStateChange],
) -> dict[EventSubscriptionKey, EventSubscriptionState]:
    return {
        c.subscription.key: c.subscription
        for c in changes
        if c.type is _ChangeType.REMOVE
    }


def _count(
    changes: Sequence[EventSubscriptionStateChange],
    before: dict[EventSubscriptionKey, EventSubscriptionState],
) -> int:
    """How many sources were allocated or revoked by ``changes``."""
    total = 0
    for change in changes:
        old = before.get(change.subscription.key)
        old_sources = set(old.event_sources) if old is not None else set()
        if change.type is _ChangeType.REMOVE:
            total += len(old_sources)
        else:
            total += len(old_sources ^ set(change.subscription.event_sources))
    return total
