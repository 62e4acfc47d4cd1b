"""eventcomposition: run logicblocks event-processing nodes in any role.

- ``BrokerRole`` and the role-aware ``DistributedEventBroker``: coordinator-only,
  observer-only or full nodes.
- ``EventRuntime``: register a consumer in one call; start, watch and stop it.
- ``EventNode``: one running node: its database, runtime and extra services,
  opened in order and closed in reverse.
"""

from typing import TYPE_CHECKING, Any

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

# Where each public name lives: imported on first use (PEP 562), so that importing
# a light part of the package (its command line, its errors) stays fast.
_HOMES = {
    "Backoff": ".retry",
    "BrokerRole": ".broker",
    "BrokerRoleError": ".broker",
    "CoordinatorFactory": ".broker",
    "DistributedEventBroker": ".broker",
    "DistributedEventBrokerSettings": ".broker",
    "EventCompositionError": ".errors",
    "EventConsumerSettings": ".runtime",
    "EventNode": ".node",
    "EventRuntime": ".runtime",
    "InMemoryClusterState": ".broker",
    "RuntimeLifecycleError": ".runtime",
    "make_event_broker": ".broker",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(home, __name__), name)
    globals()[name] = value
    return value


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
