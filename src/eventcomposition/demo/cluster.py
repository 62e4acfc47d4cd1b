"""A whole cluster of the sample application in one process: what the demo runs.

One coordinator-only node and K observer-only nodes, each its own
``DemoContainer``. In memory they share one ``InMemoryClusterState`` (events and
coordination) and one projection storage; on PostgreSQL each node has its own pool
on the same database, as separate processes would.
"""

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from dependency_injector import providers
from logicblocks.event.processing.broker.strategies.distributed import (
    EventSubscriberState,
    PostgresEventSubscriberStateStore,
    PostgresEventSubscriptionStateStore,
)
from logicblocks.event.projection import InMemoryProjectionStorageAdapter
from logicblocks.event.store import EventStore
from logicblocks.event.types import CategoryIdentifier, EventSourceIdentifier
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from ..broker import BrokerRole, InMemoryClusterState
from ..containers import build_container, resolve, shutdown
from ..errors import EventCompositionError
from ..runtime import EventRuntime
from ..settings import EventCompositionSettings
from .container import DemoContainer
from .orders import DemoNames
from .processor import CustomerTotalsProcessor
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
        store = PostgresEventSubscriberStateStore(
            node_id="demo", connection_source=self.pool
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
        store = PostgresEventSubscriptionStateStore(
            node_id="demo", connection_source=self.pool
        )
        held: dict[str, list[EventSourceIdentifier]] = {}
        for subscription in await store.list():
            node_id = node_of.get(subscription.id)
            if subscription.group == group and node_id is not None:
                held.setdefault(node_id, []).extend(subscription.event_sources)
        return held


@dataclass
class DemoNode:
    node_id: str
    role: BrokerRole
    container: DemoContainer
    runtime: EventRuntime | None = None
    processor: CustomerTotalsProcessor | None = None

    @property
    def applied(self) -> int:
        return self.processor.applied if self.processor else 0

    @property
    def malformed(self) -> int:
        return self.processor.malformed if self.processor else 0

    @property
    def replayed(self) -> int:
        return self.processor.replayed if self.processor else 0

    async def start(self) -> None:
        self.processor = await resolve(self.container.processor)
        self.runtime = await resolve(self.container.runtime)
        await self.runtime.start()


@dataclass(frozen=True)
class NodeSummary:
    """What one node did, as the demo's table shows it."""

    node_id: str
    role: BrokerRole
    applied: int
    malformed: int
    replayed: int
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
        *,
        observers: int,
        names: DemoNames | None = None,
    ) -> None:
        if observers < 1:
            raise ValueError(f"need at least one observer, got {observers}")
        self.names = names or DemoNames()
        plan = [(f"observer-{n}", BrokerRole.OBSERVER) for n in range(1, observers + 1)]
        plan.append((COORDINATOR_ID, BrokerRole.COORDINATOR))
        self.nodes = [
            self._node(node_id, settings_for(node_id, role), role)
            for node_id, role in plan
        ]
        self._state: InMemoryClusterState | None = None
        self._projections: InMemoryProjectionStorageAdapter | None = None
        if self.storage_type == "memory":
            self._share_memory_storage()

    @property
    def storage_type(self) -> str:
        return str(self.coordinator.container.storage_type())

    @property
    def observers(self) -> list[DemoNode]:
        return [n for n in self.nodes if n.role is BrokerRole.OBSERVER]

    @property
    def coordinator(self) -> DemoNode:
        return self.nodes[-1]

    def _node(
        self, node_id: str, settings: EventCompositionSettings, role: BrokerRole
    ) -> DemoNode:
        if settings.node.id != node_id or settings.node.role is not role:
            raise ValueError(
                f"settings for node '{node_id}' name node '{settings.node.id}' "
                f"with role '{settings.node.role}'"
            )
        container = build_container(DemoContainer, settings)
        container.names.override(providers.Object(self.names))
        return DemoNode(node_id=node_id, role=role, container=container)

    def _share_memory_storage(self) -> None:
        self._state = InMemoryClusterState()
        self._projections = InMemoryProjectionStorageAdapter()
        for node in self.nodes:
            node.container.cluster_state.override(providers.Object(self._state))
            node.container.projection_storage_adapter.override(
                providers.Object(self._projections)
            )

    async def view(self) -> ClusterView:
        if self._state is not None:
            return InMemoryClusterView(self._state)
        return PostgresClusterView(
            await resolve(self.coordinator.container.connection_pool)
        )

    async def event_store(self) -> EventStore:
        """Where to publish: the coordinator's store, on the cluster's storage."""
        return await resolve(self.coordinator.container.event_store)

    async def start(self, *, registration_timeout: float) -> None:
        """Start the observers, wait for their subscribers, start the coordinator.

        Raises ``DemoClusterError`` when the observers' subscribers are not all
        registered within ``registration_timeout`` seconds.
        """
        view = await self.view()
        for node in self.observers:
            await node.start()
        expected = {node.node_id for node in self.observers}
        if not await _eventually(
            lambda: _subscribed(view, self.names.subscriber_group, expected),
            within=registration_timeout,
        ):
            registered = await view.subscriber_nodes(self.names.subscriber_group)
            raise DemoClusterError(
                f"the observers' subscribers did not register within "
                f"{registration_timeout:g}s "
                f"(registered: {', '.join(sorted(registered)) or 'none'})"
            )
        await self.coordinator.start()

    @property
    def applied(self) -> int:
        return sum(node.applied for node in self.nodes)

    @property
    def malformed(self) -> int:
        return sum(node.malformed for node in self.nodes)

    @property
    def processed(self) -> int:
        return self.applied + self.malformed

    async def summaries(self) -> list[NodeSummary]:
        """Each node's counts and the sources it holds now."""
        held = await (await self.view()).sources_by_node(self.names.subscriber_group)
        return [
            NodeSummary(
                node_id=node.node_id,
                role=node.role,
                applied=node.applied,
                malformed=node.malformed,
                replayed=node.replayed,
                sources=tuple(sorted(_names_of(held.get(node.node_id, [])))),
            )
            for node in self.nodes
        ]

    async def totals(self) -> dict[str, CustomerTotals]:
        """The projection as stored (read through the coordinator's storage)."""
        store = await resolve(self.coordinator.container.projection_store)
        return await read_totals(store, self.names.projection_name)

    async def stop(self) -> None:
        """Stop every node gracefully (observers first); raises the first failure."""
        failures: list[Exception] = []
        for node in self.nodes:
            try:
                await _stop_node(node.container)
            except Exception as error:
                failures.append(error)
        if failures:
            raise failures[0]


async def _stop_node(container: DemoContainer) -> None:
    # The runtime first, while the node's pool is still open: dependency-injector
    # orders shutdowns by direct dependencies only, and the runtime reaches the pool
    # only through the broker, so ``shutdown`` alone may close the pool under a
    # stopping broker (whose subscriber manager then fails and restarts forever).
    pending = container.runtime.shutdown()
    if inspect.isawaitable(pending):
        await pending
    await shutdown(container)


async def _subscribed(view: ClusterView, group: str, expected: set[str]) -> bool:
    return expected <= set(await view.subscriber_nodes(group))


async def _eventually(
    condition: Callable[[], Awaitable[bool]],
    *,
    within: float,
    interval: float = 0.05,
) -> bool:
    deadline = time.monotonic() + within
    while True:
        if await condition():
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(interval)


def _names_of(sources: Sequence[EventSourceIdentifier]) -> list[str]:
    return [
        source.category if isinstance(source, CategoryIdentifier) else str(source)
        for source in sources
    ]
