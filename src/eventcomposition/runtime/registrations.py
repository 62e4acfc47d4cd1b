"""Declarations of what a runtime registers, so a composition root can list them.

``EventRuntime.register(declaration)`` registers one; an application's container
lists them in its ``consumers`` provider.
"""

from dataclasses import dataclass

from logicblocks.event.processing import (
    EventConsumer,
    EventSubscriber,
    EventSubscriptionConsumer,
)
from logicblocks.event.types import StoredEvent

from .settings import EventConsumerSettings


@dataclass(frozen=True)
class SubscriptionConsumerRegistration:
    """A subscription consumer: allocated sources by the broker, then polled."""

    consumer: EventSubscriptionConsumer[StoredEvent]
    settings: EventConsumerSettings | None = None


@dataclass(frozen=True)
class ConsumerRegistration:
    """A plain consumer, polled but not known to the broker."""

    consumer: EventConsumer
    settings: EventConsumerSettings | None = None
    name: str | None = None


@dataclass(frozen=True)
class SubscriberRegistration:
    """A bare subscriber, allocated sources by the broker and never polled."""

    subscriber: EventSubscriber[StoredEvent]


type Registration = (
    SubscriptionConsumerRegistration | ConsumerRegistration | SubscriberRegistration
)
