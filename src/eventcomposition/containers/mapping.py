"""From validated settings to the typed objects the layers take.

Plain functions the container declares as providers; they hold no lifecycle.
"""

from dataclasses import fields

from logicblocks.event.processing import SingletonEventBrokerSettings
from logicblocks.event.processing.broker import (
    DistributedEventBrokerSettings as LogicblocksDistributedEventBrokerSettings,
)
from logicblocks.event.processing.broker import EventBrokerType

from ..broker import DistributedEventBrokerSettings
from ..database import PostgresDatabase
from ..retry import Backoff
from ..runtime import EventConsumerSettings, error_handler_for
from ..settings import EventCompositionSettings, PostgresSettings

# The broker timings keep logicblocks' names in the settings model, so they map
# one to one: a timing logicblocks adds is one declaration in the model.
_TIMINGS = tuple(
    field.name for field in fields(LogicblocksDistributedEventBrokerSettings)
)


def broker_settings_from(
    settings: EventCompositionSettings,
) -> DistributedEventBrokerSettings | SingletonEventBrokerSettings:
    broker = settings.broker
    if broker.type == "singleton":
        return SingletonEventBrokerSettings(
            distribution_interval=broker.distribution_interval
        )
    return DistributedEventBrokerSettings(
        role=settings.node.role,
        restart_backoff=Backoff(
            initial=broker.retry_initial_delay, maximum=broker.retry_max_delay
        ),
        **{name: getattr(broker, name) for name in _TIMINGS},
    )


def broker_type_from(settings: EventCompositionSettings) -> type[EventBrokerType]:
    if settings.broker.type == "singleton":
        return EventBrokerType.Singleton
    return EventBrokerType.Distributed


def consumer_settings_from(settings: EventCompositionSettings) -> EventConsumerSettings:
    consumers = settings.consumers
    return EventConsumerSettings(
        error_handler=error_handler_for(consumers.error_policy),
        poll_interval=consumers.poll_interval,
        isolation_mode=consumers.isolation_mode,
        stop_timeout=consumers.stop_timeout,
        retry_backoff=Backoff(
            initial=consumers.retry_initial_delay, maximum=consumers.retry_max_delay
        ),
    )


def postgres_database(postgres: PostgresSettings) -> PostgresDatabase:
    return PostgresDatabase(
        postgres.conninfo(),
        where=postgres.location(),
        min_size=postgres.pool_min_size,
        max_size=postgres.pool_max_size,
        connect_timeout=postgres.connect_timeout,
    )
