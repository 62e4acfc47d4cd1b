"""eventcomposition: run logicblocks event-processing nodes in any role.

- ``BrokerRole`` and the role-aware ``DistributedEventBroker``: coordinator-only,
  observer-only or full nodes.
- ``EventRuntime``: register a consumer in one call; start, watch and stop it.
- ``EventNode``: one running node: its database, runtime and extra services,
  opened in order and closed in reverse.
- ``EventHandler`` (per-event code) and ``BatchProcessor``, applied by
  ``make_transactional_consumer`` in batches whose effects commit with their
  checkpoint (``Transaction``): fenced, exactly once in effect.
"""

from typing import TYPE_CHECKING

from ._lazy import lazy_attributes

if TYPE_CHECKING:
    from .broker import (
        BrokerRole,
        BrokerRoleError,
        CoordinatorFactory,
        DistributedEventBroker,
        DistributedEventBrokerSettings,
        InMemoryClusterState,
        make_event_broker,
    )
    from .consumers import (
        BatchProcessor,
        EventHandler,
        Transaction,
        make_transactional_consumer,
    )
    from .errors import EventCompositionError
    from .node import EventNode
    from .retry import Backoff
    from .runtime import EventConsumerSettings, EventRuntime, RuntimeLifecycleError

__all__ = [
    "Backoff",
    "BatchProcessor",
    "BrokerRole",
    "BrokerRoleError",
    "CoordinatorFactory",
    "DistributedEventBroker",
    "DistributedEventBrokerSettings",
    "EventCompositionError",
    "EventConsumerSettings",
    "EventHandler",
    "EventNode",
    "EventRuntime",
    "InMemoryClusterState",
    "RuntimeLifecycleError",
    "Transaction",
    "make_event_broker",
    "make_transactional_consumer",
]

__getattr__ = lazy_attributes(__name__, __file__)
