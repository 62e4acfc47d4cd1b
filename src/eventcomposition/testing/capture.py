"""Processors and subscribers that record what reaches them, for assertions."""

from collections.abc import Callable, Sequence

from logicblocks.event.processing import EventProcessor
from logicblocks.event.processing.broker import EventSubscriber, EventSubscriberHealth
from logicblocks.event.sources import EventSource
from logicblocks.event.types import EventSourceIdentifier, StoredEvent


class CapturingProcessor(EventProcessor[StoredEvent]):
    """Records every event it processes; can be told to fail on some.

    ``fail_on`` picks the events to raise on (the failure is raised each time the
    event is offered, as a real bug in a processor would be).
    """

    def __init__(
        self,
        label: str = "",
        *,
        fail_on: Callable[[StoredEvent], bool] | None = None,
    ) -> None:
        self.label = label
        self.events: list[StoredEvent] = []
        self.failures = 0
        self._fail_on = fail_on

    async def process_event(self, event: StoredEvent) -> None:
        if self._fail_on is not None and self._fail_on(event):
            self.failures += 1
            raise ValueError(
                f"refusing event {event.name} at position {event.sequence_number}"
            )
        self.events.append(event)

    @property
    def ids(self) -> set[str]:
        return {event.id for event in self.events}


class CapturingSubscriber(EventSubscriber[StoredEvent]):
    """A bare subscriber that records the sources allocated to it."""

    def __init__(
        self,
        group: str,
        id: str,
        subscription_requests: Sequence[EventSourceIdentifier],
    ) -> None:
        self._group = group
        self._id = id
        self._requests = list(subscription_requests)
        self.sources: list[EventSourceIdentifier] = []

    @property
    def group(self) -> str:
        return self._group

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
        if source.identifier not in self.sources:
            self.sources.append(source.identifier)

    async def withdraw(
        self, source: EventSource[EventSourceIdentifier, StoredEvent]
    ) -> None:
        if source.identifier in self.sources:
            self.sources.remove(source.identifier)
