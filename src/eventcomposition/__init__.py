"""eventcomposition: run logicblocks event-processing nodes in any role.

- ``BrokerRole`` and the role-aware ``DistributedEventBroker``: coordinator-only,
  observer-only or full nodes.
- ``EventRuntime``: register a consumer in one call; start, watch and stop it.
- ``EventNode``: one running node: its database, runtime and extra services,
  opened in order and closed in reverse.
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
    from .errors import EventCompositionError
    from .node import EventNode
    from .retry import Backoff
    from .runtime import EventConsumerSettings, EventRuntime, RuntimeLifecycleError

__all__ = [
    "Backoff",
    "BrokerRole",
    "BrokerRoleError",
    "CoordinatorFactory",
    "DistributedEventBroker",
    "DistributedEventBrokerSettings",
    "EventCompositionError",
    "EventConsumerSettings",
    "EventNode",
    "EventRuntime",
    "InMemoryClusterState",
    "RuntimeLifecycleError",
    "make_event_broker",
]

__getattr__ = lazy_attributes(__name__, __file__)
