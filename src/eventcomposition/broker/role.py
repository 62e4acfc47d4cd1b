from enum import StrEnum


class BrokerRole(StrEnum):
    """What a distributed broker node does in its cluster.

    - ``COORDINATOR``: allocates event sources to subscribers across the cluster and
      processes nothing itself.
    - ``OBSERVER``: processes the sources allocated to its subscribers and never
      coordinates.
    - ``FULL``: both, as logicblocks' own broker does.
    """

    COORDINATOR = "coordinator"
    OBSERVER = "observer"
    FULL = "full"

    @property
    def coordinates(self) -> bool:
        return self in (BrokerRole.COORDINATOR, BrokerRole.FULL)

    @property
    def observes(self) -> bool:
        return self in (BrokerRole.OBSERVER, BrokerRole.FULL)
