"""Subscription consumers over several event sources.

logicblocks' ``make_event_store_subscriber`` takes one subscription request, and its
coordinator allocates whole requested sources to subscribers: a group whose
subscribers request one category can only ever run on one node. Requesting several
sources (categories, or streams) lets the coordinator spread them across the group's
subscribers. Each source then needs its own consumer state, because the state records
the last global sequence number consumed from that source.
"""

from collections.abc import Sequence
from uuid import uuid4

from logicblocks.event.processing import (
    EventConsumerStateStore,
    EventCount,
    EventProcessor,
    EventSourceConsumer,
    EventSubscriptionConsumer,
)
from logicblocks.event.processing.consumers.state import (
    StoredEventEventConsumerStateConverter,
)
from logicblocks.event.sources import EventSource
from logicblocks.event.store import EventStore
from logicblocks.event.types import (
    CategoryIdentifier,
    EventSourceIdentifier,
    StoredEvent,
    StreamIdentifier,
)


def source_key(identifier: EventSourceIdentifier) -> str:
    """A short readable name for an event source: ``category`` or ``category/stream``."""
    match identifier:
        case StreamIdentifier(category=category, stream=stream):
            return f"{category}/{stream}"
        case CategoryIdentifier(category=category):
            return category
    return str(identifier.serialise())


def state_category_name(subscriber_group: str, source: EventSourceIdentifier) -> str:
    """Where a group keeps its consumer state for one source."""
    return f"{subscriber_group}.state.{source_key(source).replace('/', '.')}"


def make_subscription_consumer(
    *,
    event_store: EventStore,
    subscriber_group: str,
    subscription_requests: Sequence[EventSourceIdentifier],
    event_processor: EventProcessor[StoredEvent],
    subscriber_id: str | None = None,
    state_persistence_interval: int = 100,
) -> EventSubscriptionConsumer[StoredEvent]:
    """A subscriber for ``subscription_requests`` that feeds ``event_processor``.

    Consumer state for each source lives in its own category of ``event_store``
    (see ``state_category_name``), so a source keeps its position when it moves to
    another node. Each subscriber gets a fresh id unless one is given.
    """
    if not subscription_requests:
        raise ValueError(
            f"subscriber group '{subscriber_group}' requests no event sources: "
            "give at least one category or stream"
        )

    def consumer_for(
        source: EventSource[EventSourceIdentifier, StoredEvent],
    ) -> EventSourceConsumer[EventSourceIdentifier, StoredEvent]:
        state_store = EventConsumerStateStore[StoredEvent](
            category=event_store.category(
                category=state_category_name(subscriber_group, source.identifier)
            ),
            converter=StoredEventEventConsumerStateConverter(),
            persistence_interval=EventCount(state_persistence_interval),
        )
        return EventSourceConsumer(
            source=source, processor=event_processor, state_store=state_store
        )

    return EventSubscriptionConsumer[StoredEvent](
        group=subscriber_group,
        id=subscriber_id or uuid4().hex,
        subscription_requests=list(subscription_requests),
        delegate_factory=consumer_for,
    )
