from ..errors import EventCompositionError
from .role import BrokerRole


class BrokerRoleError(EventCompositionError, RuntimeError):
    """An operation the broker's role does not allow."""

    def __init__(self, role: BrokerRole, action: str) -> None:
        self.role = role
        super().__init__(
            f"cannot {action} on a broker with role '{role}': a coordinator-only node "
            "allocates work and processes nothing; register subscribers and consumers "
            f"on a node with role '{BrokerRole.OBSERVER}' or '{BrokerRole.FULL}'"
        )
