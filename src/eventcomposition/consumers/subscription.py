"""Subscription consumers over several event sources.

logicblocks' ``make_event_store_subscriber`` takes one subscription request, and its
coordinator allocates whole requested sources to subscribers: a group whose
subscribers request one category can only ever run on one node. Requesting several
sources (categories, or streams) lets the coordinator spread them across the group's
subscribers. Each source then needs its own consumer state, because the state records
the last global sequence number consumed from that source.

Sources are also kept apart when they fail: one failing source does not stop the
others (logicblocks' subscription consumer stops at the first), and a source that
failed starts its next poll afresh from its saved state. That matters after a
hand-over that overlapped for a moment: logicblocks' state store keeps the position
it last wrote, so once another node had written the same state stream, every later
save of the old store would fail.
"""

from collections.abc import Callable, Sequence
from uuid import uuid4

import structlog
from logicblocks.event.processing import (
    EventConsumer,
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

logger = structlog.get_logger("eventcomposition.consumers")


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


class RestartingSourceConsumer(EventConsumer):
    """Consumes one source; after a failure, starts over from its saved state.

    The next ``consume_all`` after a failure uses a new consumer (and so a new state
    store) from ``make``, which reloads the source's saved position: at-least-once
    delivery, as after a restart of the node.
    """

    def __init__(self, make: Callable[[], EventConsumer]) -> None:
        self._make = make
        self._current = make()

    async def consume_all(self) -> None:
        try:
            await self._current.consume_all()
        except Exception:
            self._current = self._make()
            raise


class MultiSourceSubscriptionConsumer(EventSubscriptionConsumer[StoredEvent]):
    """A subscription consumer whose sources fail independently.

    Every allocated source is consumed in each ``consume_all``, even after another
    failed; the failures are raised together at the end (an ``ExceptionGroup`` when
    several failed), so the runtime still sees and reports them.
    """

    @property
    def sources(self) -> tuple[EventSourceIdentifier, ...]:
        """The sources allocated to this subscriber now."""
        return tuple(self._delegates)

    async def consume_all(self) -> None:
        failures: list[Exception] = []
        # logicblocks keeps the delegates in ``_delegates`` (pinned by a test).
        for identifier, delegate in dict(self._delegates).items():
            try:
                await delegate.consume_all()
            except Exception as error:
                await logger.awarning(
                    "consumer.source-failed",
                    subscriber=f"{self.group}/{self.id}",
                    source=source_key(identifier),
                    error=repr(error),
                )
                failures.append(error)
        if len(failures) == 1:
            raise failures[0]
        if failures:
            raise ExceptionGroup(
                f"{len(failures)} sources of {self.group}/{self.id} failed", failures
            )


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
    ) -> EventConsumer:
        def fresh() -> EventSourceConsumer[EventSourceIdentifier, StoredEvent]:
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

        return RestartingSourceConsumer(fresh)

    return MultiSourceSubscriptionConsumer(
        group=subscriber_group,
        id=subscriber_id or uuid4().hex,
        subscription_requests=list(subscription_requests),
        delegate_factory=consumer_for,
    )
