"""Role-aware distributed brokers over logicblocks 0.1.11."""

from typing import TYPE_CHECKING

from .._lazy import lazy_attributes

if TYPE_CHECKING:
    from .allocation import AllocationStrategy, allocation_strategy, balanced, fill
    from .balancing import (
        BalancingCoordinatorFactory,
        BalancingEventSubscriptionCoordinator,
        ReleaseCheck,
    )
    from .broker import DistributedEventBroker
    from .builders import (
        DistributedEventBrokerSettings,
        InMemoryDistributedEventBrokerBuilder,
        PostgresDistributedEventBrokerBuilder,
        make_event_broker,
    )
    from .coordination import CoordinatorFactory, leader_checking_coordinator
    from .errors import BrokerRoleError
    from .leader import COORDINATOR_LOCK_NAME, CoordinatorLeader, leading_coordinator
    from .leadership import (
        CheckedPostgresLockManager,
        LeaderCheckingCoordinator,
        LeadershipLostError,
        verify_leadership,
    )
    from .memory import InMemoryClusterState
    from .role import BrokerRole

__all__ = [
    "COORDINATOR_LOCK_NAME",
    "AllocationStrategy",
    "BalancingCoordinatorFactory",
    "BalancingEventSubscriptionCoordinator",
    "BrokerRole",
    "BrokerRoleError",
    "CheckedPostgresLockManager",
    "CoordinatorFactory",
    "CoordinatorLeader",
    "DistributedEventBroker",
    "DistributedEventBrokerSettings",
    "InMemoryClusterState",
    "InMemoryDistributedEventBrokerBuilder",
    "LeaderCheckingCoordinator",
    "LeadershipLostError",
    "PostgresDistributedEventBrokerBuilder",
    "ReleaseCheck",
    "allocation_strategy",
    "balanced",
    "fill",
    "leader_checking_coordinator",
    "leading_coordinator",
    "make_event_broker",
    "verify_leadership",
]

__getattr__ = lazy_attributes(__name__, __file__)
