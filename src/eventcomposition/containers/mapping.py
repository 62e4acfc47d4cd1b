"""From validated settings to the typed objects the layers take.

Plain functions the container declares as providers; they hold no lifecycle.
"""

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import fields
from typing import Any

from logicblocks.event.processing import IsolationMode, SingletonEventBrokerSettings
from logicblocks.event.processing.broker import (
    DistributedEventBrokerSettings as LogicblocksDistributedEventBrokerSettings,
)
from logicblocks.event.processing.broker import EventBrokerType

from ..broker import (
    BalancingCoordinatorFactory,
    CoordinatorFactory,
    DistributedEventBrokerSettings,
    ReleaseCheck,
    allocation_strategy,
)
from ..database import ConnectionTimeouts, PostgresDatabase
from ..metrics import NodeMetrics
from ..retry import Backoff
from ..runtime import EventConsumerSettings, error_handler_for
from ..schema import NODE_PRIVILEGES
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
        poll_interval=consumers.notify_poll_interval
        if wakes_by_notification(settings)
        else consumers.poll_interval,
        isolation_mode=IsolationMode[consumers.isolation_mode.name],
        stop_timeout=consumers.stop_timeout,
        retry_backoff=Backoff(
            initial=consumers.retry_initial_delay, maximum=consumers.retry_max_delay
        ),
    )


def coordinator_from(
    settings: EventCompositionSettings,
    release_check: ReleaseCheck,
    metrics: NodeMetrics | None = None,
) -> CoordinatorFactory:
    """The leading coordinator's allocation (``broker.allocation``): sources
    revoked from a holder are reassigned once its claim is released; its
    allocation changes and leadership are recorded in ``metrics``."""
    return BalancingCoordinatorFactory(
        strategy=allocation_strategy(settings.broker.allocation),
        max_moves_per_distribution=settings.broker.max_moves_per_distribution,
        release_check=release_check,
        metrics=metrics,
    )


def wakes_by_notification(settings: EventCompositionSettings) -> bool:
    """Whether consumers are woken by PostgreSQL notifications (else they poll)."""
    return settings.storage.type == "postgres" and settings.consumers.wake == "notify"


def switch(enabled: bool) -> str:
    """A selector key for a part that is on or off."""
    return "on" if enabled else "off"


def node_services(
    builtin: Sequence[AbstractAsyncContextManager[Any] | None],
    application: Sequence[AbstractAsyncContextManager[Any]],
) -> list[AbstractAsyncContextManager[Any]]:
    """The node's services: its own that are switched on, then the application's."""
    return [*(service for service in builtin if service is not None), *application]


def postgres_database(postgres: PostgresSettings) -> PostgresDatabase:
    return PostgresDatabase(
        postgres.conninfo(),
        where=postgres.location(),
        min_size=postgres.pool_min_size,
        max_size=postgres.pool_max_size,
        connect_timeout=postgres.connect_timeout,
        required_privileges=NODE_PRIVILEGES,
        timeouts=connection_timeouts(postgres),
    )


def connection_timeouts(postgres: PostgresSettings) -> ConnectionTimeouts:
    return ConnectionTimeouts(
        idle_in_transaction=postgres.idle_in_transaction_timeout,
        tcp_user_timeout=postgres.tcp_user_timeout,
        keepalives_idle=postgres.keepalives_idle,
    )
