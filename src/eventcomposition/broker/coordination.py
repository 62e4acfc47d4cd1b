"""The seam where a coordinator goes in: ``CoordinatorFactory``.

The builders and ``make_event_broker`` take a ``coordinator`` factory and call it
once per broker with the node's id, the cluster's lock manager and state stores,
and the broker settings. A coordinator implements logicblocks'
``EventSubscriptionCoordinator`` (``coordinate()`` and ``status``). To lead
alongside other coordinators it should:

- take leadership with ``lock_manager.try_lock(COORDINATOR_LOCK_NAME)``, the lock
  every coordinator of the cluster contends for (and the one ``cluster status``
  reports);
- call ``verify_leadership(lock_manager)`` before each distribution, so a leader
  whose PostgreSQL lock vanished (a server restart) stops instead of leading beside
  a new one;
- write allocations through ``subscription_state_store`` and read live subscribers
  from ``subscriber_state_store``.

``leader_checking_coordinator`` is the default: logicblocks' coordinator with the
leadership check.
"""

from typing import Protocol

from logicblocks.event.processing import LockManager
from logicblocks.event.processing.broker import (
    DistributedEventBrokerSettings as LogicblocksDistributedEventBrokerSettings,
)
from logicblocks.event.processing.broker.strategies.distributed import (
    EventSubscriberStateStore,
    EventSubscriptionCoordinator,
    EventSubscriptionStateStore,
)

from .leadership import LeaderCheckingCoordinator


class CoordinatorFactory(Protocol):
    """Makes the coordinator of one broker from the broker's shared parts."""

    def __call__(
        self,
        *,
        node_id: str,
        lock_manager: LockManager,
        subscriber_state_store: EventSubscriberStateStore,
        subscription_state_store: EventSubscriptionStateStore,
        settings: LogicblocksDistributedEventBrokerSettings,
    ) -> EventSubscriptionCoordinator: ...


def leader_checking_coordinator(
    *,
    node_id: str,
    lock_manager: LockManager,
    subscriber_state_store: EventSubscriberStateStore,
    subscription_state_store: EventSubscriptionStateStore,
    settings: LogicblocksDistributedEventBrokerSettings,
) -> EventSubscriptionCoordinator:
    """logicblocks' coordinator, timed by ``settings``, checking its leadership."""
    return LeaderCheckingCoordinator(
        node_id=node_id,
        lock_manager=lock_manager,
        subscriber_state_store=subscriber_state_store,
        subscription_state_store=subscription_state_store,
        subscriber_max_time_since_last_seen=settings.coordinator_subscriber_max_time_since_last_seen,
        distribution_interval=settings.coordinator_distribution_interval,
        leadership_max_duration=settings.coordinator_leadership_max_duration,
        leadership_attempt_interval=settings.coordinator_leadership_attempt_interval,
    )
