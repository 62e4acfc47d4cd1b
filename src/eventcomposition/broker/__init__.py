"""Role-aware distributed brokers over logicblocks 0.1.11."""

from .broker import DistributedEventBroker
from .builders import (
    DistributedEventBrokerSettings,
    InMemoryDistributedEventBrokerBuilder,
    PostgresDistributedEventBrokerBuilder,
    make_event_broker,
)
from .errors import BrokerRoleError
from .memory import InMemoryClusterState
from .role import BrokerRole

__all__ = [
    "BrokerRole",
    "BrokerRoleError",
    "DistributedEventBroker",
    "DistributedEventBrokerSettings",
    "InMemoryClusterState",
    "InMemoryDistributedEventBrokerBuilder",
    "PostgresDistributedEventBrokerBuilder",
    "make_event_broker",
]
