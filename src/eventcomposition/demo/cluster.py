"""A whole cluster of the sample application in one process: what the demo runs.

One coordinator-only node and K observer-only nodes, each an ``EventNode`` made
by a ``NodeFactory`` (the demo command passes
``eventcomposition.containers.demo.demo_node``). In memory they share one
``InMemoryClusterState`` (events and coordination), one checkpoint store (checkpoints
and claims) and one projection storage; on PostgreSQL each node has its own pool
on the same database, as separate processes would.
"""

from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any, Protocol

from logicblocks.event.processing.broker.strategies.distributed import (
    EventSubscriberState,
)
from logicblocks.event.projection import (
    InMemoryProjectionStorageAdapter,
    ProjectionStore,
)
from logicblocks.event.store import EventStore
from logicblocks.event.types import EventSourceIdentifier
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from ..broker import BrokerRole, InMemoryClusterState
from ..broker.stores import (
    AutocommitSubscriberStateStore,
    AutocommitSubscriptionStateStore,
)
from ..consumers import InMemoryCheckpointStore, source_key
from ..errors import EventCompositionError
from ..node import EventNode
from ..settings import EventCompositionSettings
from ..waiting import wait_for
from .batches import CustomerTotalsBatchProcessor
from .orders import DemoNames
from .totals import CustomerTotals, read_totals

type SettingsFor = Callable[[str, BrokerRole], EventCompositionSettings]
"""Makes the settings of one node from its id and role."""

COORDINATOR_ID = "coordinator-1"


class DemoClusterError(EventCompositionError):
    """The in-process demo cluster could not start as planned."""


class ClusterView(Protocol):
    """Reads the cluster's coordination state: who subscribes, who holds what."""

    async def subscriber_nodes(self, group: str) -> list[str]: ...

    async def sources_by_node(
        self, group: str
    ) -> dict[str, list[EventSourceIdentifier]]: ...


@dataclass(frozen=True)
class InMemoryClusterView:
    state: InMemoryClusterState

    async def subscriber_nodes(self, group: str) -> list[str]:
        return [s.node_id for s in self.state.subscribers() if s.group == group]

    async def sources_by_node(
        self, group: str
    ) -> dict[str, list[EventSourceIdentifier]]:
        # The demo's state is its own: every subscriber in it is of the demo's group.
        return self.state.sources_by_node()


@dataclass(frozen=True)
class PostgresClusterView:
    pool: AsyncConnectionPool[AsyncConnection[Any]]

    async def _subscribers(self, group: str) -> list[EventSubscriberState]:
        store = AutocommitSubscriberStateStore(
            node_id="demo", connection_pool=self.pool
        )
        return list(await store.list(subscriber_group=group))

    async def subscriber_nodes(self, group: str) -> list[str]:
        return [s.node_id for s in await self._subscribers(group)]

    async def sources_by_node(
        self, group: str
    ) -> dict[str, list[EventSourceIdentifier]]:
        # A subscription row names the node that wrote it (the coordinator); the
        # subscriber's row names the node it runs on.
        node_of = {s.id: s.node_id for s in await self._subscribers(group)}
        store = AutocommitSubscriptionStateStore(
            node_id="demo", connection_pool=self.pool
        )
        held: dict[str, list[EventSourceIdentifier]] = {}
        for subscription in await store.list():
            node_id = node_of.get(subscription.id)
            if subscription.group == group and node_id is not None:
                held.setdefault(node_id, []).extend(subscription.event_sources)
        return held


@dataclass(frozen=True)
class SharedMemory:
    """What the in-memory nodes of one process share: events, coordination,
    checkpoints and claims, and projections."""

    cluster_state: InMemoryClusterState = field(default_factory=InMemoryClusterState)
    checkpoints: InMemoryCheckpointStore = field(
        default_factory=InMemoryCheckpointStore
    )
    projections: InMemoryProjectionStorageAdapter = field(
        default_factory=InMemoryProjectionStorageAdapter
    )


@dataclass(frozen=True)
class DemoNode:
    """One node of the sample application and the parts the demo reads."""

    node: EventNode
    processor: CustomerTotalsBatchProcessor
    event_store: EventStore
    projection_store: ProjectionStore
    pool: AsyncConnectionPool[AsyncConnection[Any]] | None = None

    @property
    def node_id(self) -> str:
        return self.node.node_id

    @property
    def role(self) -> BrokerRole:
        return self.node.role


type NodeFactory = Callable[
    [EventCompositionSettings, DemoNames, SharedMemory | None], Awaitable[DemoNode]
]
"""Builds one node from its settings, the run's names and the shared memory."""


@dataclass(frozen=True)
class NodeSummary:
    """What one node did, as the demo's table shows it."""

    node_id: str
    role: BrokerRole
    applied: int
    malformed: int
    sources: tuple[str, ...] = field(default=())


class DemoCluster:
    """The sample application's nodes in one process.

    ``start`` starts the observers first and the coordinator once every observer's
    subscriber is registered, so that the first allocation spreads the sources
    over all observers (the coordinator does not move sources it has allocated).
    ``stop`` stops every node gracefully.
    """

    def __init__(
        self,
        settings_for: SettingsFor,
        make_node: NodeFactory,
        *,
        observers: int,
        names: DemoNames | None = None,
    ) -> None:
        if observers < 1:
            raise ValueError(f"need at least one observer, got {observers}")
        self.names = names or DemoNames()
        self._settings_for = settings_for
        self._make_node = make_node
        plan = [
            (self.names.node_id(f"observer-{n}"), BrokerRole.OBSERVER)
            for n in range(1, observers + 1)
        ]
        plan.append((self.names.node_id(COORDINATOR_ID), BrokerRole.COORDINATOR))
        self._plan = plan
        self.nodes: list[DemoNode] = []
        self._shared: SharedMemory | None = None
        self._stack = AsyncExitStack()

    @property
    def observers(self) -> list[DemoNode]:
        return [n for n in self.nodes if n.role is BrokerRole.OBSERVER]

    @property
    def coordinator(self) -> DemoNode:
        return self.nodes[-1]

    async def _build(self) -> None:
        for node_id, role in self._plan:
            settings = self._settings_for(node_id, role)
            if settings.node.id != node_id or settings.node.role is not role:
                raise ValueError(
                    f"settings for node '{node_id}' name node '{settings.node.id}' "
                    f"with role '{settings.node.role}'"
                )
            if settings.storage.type == "memory" and self._shared is None:
                self._shared = SharedMemory()
            self.nodes.append(await self._make_node(settings, self.names, self._shared))

    def view(self) -> ClusterView:
        if self._shared is not None:
            return InMemoryClusterView(self._shared.cluster_state)
        pool = self.coordinator.pool
        if pool is None:
            raise DemoClusterError("a PostgreSQL demo node has no pool")
        return PostgresClusterView(pool)

    @property
    def event_store(self) -> EventStore:
        """Where to publish: the coordinator's store, on the cluster's storage."""
        return self.coordinator.event_store

    async def start(self, *, registration_timeout: float) -> None:
        """Start the observers, wait for their subscribers, start the coordinator.

        Raises ``DemoClusterError`` when the observers' subscribers are not all
        registered within ``registration_timeout`` seconds.
        """
        await self._build()
        for node in self.observers:
            await self._stack.enter_async_context(node.node)
        # The coordinator's pool serves the view; it opens with its node, later.
        view = (
            self.view()
            if self._shared is not None
            else PostgresClusterView(_pool_of(self.observers[0]))
        )
        expected = {node.node_id for node in self.observers}
        if not await wait_for(
            lambda: _subscribed(view, self.names.subscriber_group, expected),
            timeout=registration_timeout,
            interval=0.05,
        ):
            registered = await view.subscriber_nodes(self.names.subscriber_group)
            raise DemoClusterError(
                f"the observers' subscribers did not register within "
                f"{registration_timeout:g}s "
                f"(registered: {', '.join(sorted(registered)) or 'none'})"
            )
        await self._stack.enter_async_context(self.coordinator.node)

    @property
    def applied(self) -> int:
        return sum(node.processor.applied for node in self.nodes)

    @property
    def malformed(self) -> int:
        return sum(node.processor.malformed for node in self.nodes)

    @property
    def processed(self) -> int:
        return self.applied + self.malformed

    async def summaries(self) -> list[NodeSummary]:
        """Each node's counts and the sources it holds now."""
        held = await self.view().sources_by_node(self.names.subscriber_group)
        return [
            NodeSummary(
                node_id=node.node_id,
                role=node.role,
                applied=node.processor.applied,
                malformed=node.processor.malformed,
                sources=tuple(sorted(_names_of(held.get(node.node_id, [])))),
            )
            for node in self.nodes
        ]

    async def totals(self) -> dict[str, CustomerTotals]:
        """The projection as stored (read through the coordinator's storage)."""
        return await read_totals(
            self.coordinator.projection_store, self.names.projection_name
        )

    async def stop(self) -> None:
        """Stop every node gracefully, in reverse of their start (the coordinator
        first); raises the first failure."""
        await self._stack.aclose()


def _pool_of(node: DemoNode) -> AsyncConnectionPool[AsyncConnection[Any]]:
    if node.pool is None:
        raise DemoClusterError(f"demo node '{node.node_id}' has no PostgreSQL pool")
    return node.pool


async def _subscribed(view: ClusterView, group: str, expected: set[str]) -> bool:
    return expected <= set(await view.subscriber_nodes(group))


def _names_of(sources: Sequence[EventSourceIdentifier]) -> list[str]:
    return [source_key(source) for source in sources]
