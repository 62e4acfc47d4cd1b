"""Coordination state that several in-memory brokers in one process can share.

logicblocks' in-memory builder gives every broker its own lock manager and state
stores, so in-memory nodes never see each other. ``InMemoryClusterState`` holds one
of each for a whole process; each node gets store views that write under its own node
id and read the cluster's shared records.
"""

from collections.abc import Sequence

from logicblocks.event.processing import InMemoryLockManager
from logicblocks.event.processing.broker.strategies.distributed import (
    EventSubscriberState,
    EventSubscriptionKey,
    EventSubscriptionState,
    InMemoryEventSubscriberStateStore,
    InMemoryEventSubscriptionStateStore,
)
from logicblocks.event.store import EventStorageAdapter, InMemoryEventStorageAdapter
from logicblocks.event.types import EventSourceIdentifier


class _SharedSubscriberStateStore(InMemoryEventSubscriberStateStore):
    # The library's store keeps its records in the public list ``subscribers``;
    # pointing it at the cluster's list shares them (pinned by a test).
    def __init__(self, node_id: str, records: list[EventSubscriberState]) -> None:
        super().__init__(node_id=node_id)
        self.subscribers = records


class _SharedSubscriptionStateStore(InMemoryEventSubscriptionStateStore):
    # Likewise for ``_subscriptions``, the store's only state (pinned by a test).
    def __init__(
        self,
        node_id: str,
        records: dict[EventSubscriptionKey, EventSubscriptionState],
    ) -> None:
        super().__init__(node_id=node_id)
        self._subscriptions = records


class InMemoryClusterState:
    """One process's shared in-memory event storage and broker coordination state."""

    def __init__(self, adapter: EventStorageAdapter | None = None) -> None:
        self.adapter: EventStorageAdapter = adapter or InMemoryEventStorageAdapter()
        self.lock_manager = InMemoryLockManager()
        self._subscribers: list[EventSubscriberState] = []
        self._subscriptions: dict[EventSubscriptionKey, EventSubscriptionState] = {}

    def subscriber_state_store(self, node_id: str) -> InMemoryEventSubscriberStateStore:
        return _SharedSubscriberStateStore(node_id, self._subscribers)

    def subscription_state_store(
        self, node_id: str
    ) -> InMemoryEventSubscriptionStateStore:
        return _SharedSubscriptionStateStore(node_id, self._subscriptions)

    def subscribers(self) -> Sequence[EventSubscriberState]:
        """The subscribers registered by every node, each with its node id."""
        return list(self._subscribers)

    def subscriptions(self) -> Sequence[EventSubscriptionState]:
        """The current allocation of event sources to subscribers."""
        return list(self._subscriptions.values())

    def sources_by_node(self) -> dict[str, list[EventSourceIdentifier]]:
        """Event sources currently allocated to each node's subscribers."""
        node_of = {(s.group, s.id): s.node_id for s in self._subscribers}
        held: dict[str, list[EventSourceIdentifier]] = {}
        for subscription in self._subscriptions.values():
            node_id = node_of.get((subscription.group, subscription.id))
            if node_id is not None:
                held.setdefault(node_id, []).extend(subscription.event_sources)
        return held
