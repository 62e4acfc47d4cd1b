"""``EventNode``: the one owner of a running node's lifecycle.

A node opens what it needs in order and closes it in reverse, also when a start
fails halfway:

1. its database, when it has one (the PostgreSQL pool: the server is awaited with
   retries, then the pool opened);
2. its runtime: the declared registrations registered (none on a coordinator-only
   node), then the broker and the consumers started;
3. its extra services (a NOTIFY listener, an HTTP server: any async context
   manager), entered in the order given.

On exit the services are exited in reverse, then the runtime stops (its consumers
drain, its broker leaves the cluster), then the database closes.

    async with node:
        ...                                   # the node runs
    await node.run_until_signalled()          # or: run until SIGINT or SIGTERM
"""

import asyncio
import signal
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from types import TracebackType
from typing import Any, Protocol, Self, runtime_checkable

import structlog
from logicblocks.event.processing import ProcessStatus, determine_multi_process_status

from .broker import BrokerRole
from .errors import EventCompositionError
from .runtime import EventRuntime, Registration

logger = structlog.get_logger("eventcomposition.node")

type NodeService = AbstractAsyncContextManager[Any]
"""An extra service of a node: entered once the runtime runs, exited before it stops."""


@runtime_checkable
class ObservableService(Protocol):
    """A node service that reports its own name and status.

    Services without them are named after their class and reported ``RUNNING``
    while the node has them entered.
    """

    @property
    def name(self) -> str: ...

    @property
    def status(self) -> ProcessStatus: ...


@runtime_checkable
class NodeAwareService(Protocol):
    """A node service that reads the node it serves (an HTTP server, say).

    The node hands itself over when it is built, so that a service can be declared
    before the node that runs it exists.
    """

    def attach_node(self, node: "EventNode") -> None: ...


class NodeLifecycleError(EventCompositionError, RuntimeError):
    """A node method called at a point of its lifecycle that does not allow it."""


class EventNode:
    """One running node: its database, its runtime and its extra services.

    ``registrations`` are registered on the runtime when the node opens (skipped,
    with one log line, on a coordinator-only node). A node runs once, as its
    runtime does.
    """

    def __init__(
        self,
        runtime: EventRuntime,
        *,
        registrations: Sequence[Registration] = (),
        services: Sequence[NodeService] = (),
        database: AbstractAsyncContextManager[Any] | None = None,
    ) -> None:
        self._runtime = runtime
        self._registrations = list(registrations)
        self._services = list(services)
        self._database = database
        self._service_names = _unique_names(self._services)
        self._entered: set[int] = set()
        self._stack: AsyncExitStack | None = None
        self._used = False
        self._logger = logger.bind(node_id=runtime.node_id, role=str(runtime.role))
        for service in self._services:
            if isinstance(service, NodeAwareService):
                service.attach_node(self)

    @property
    def node_id(self) -> str:
        return self._runtime.node_id

    @property
    def role(self) -> BrokerRole:
        return self._runtime.role

    @property
    def runtime(self) -> EventRuntime:
        return self._runtime

    @property
    def services(self) -> Sequence[NodeService]:
        return tuple(self._services)

    @property
    def service_statuses(self) -> Mapping[str, ProcessStatus]:
        """Each service's status by name: the runtime's, then the extra services'."""
        statuses = dict(self._runtime.service_statuses)
        for index, (name, service) in enumerate(
            zip(self._service_names, self._services, strict=True)
        ):
            statuses[name] = self._service_status(index, service)
        return statuses

    @property
    def status(self) -> ProcessStatus:
        """The node's status: the runtime's combined with its services'."""
        runtime_status = self._runtime.status
        if runtime_status in (ProcessStatus.INITIALISED, ProcessStatus.STOPPED):
            return runtime_status
        return determine_multi_process_status(*self.service_statuses.values())

    async def __aenter__(self) -> Self:
        if self._used:
            raise NodeLifecycleError(
                f"node '{self.node_id}' has already run: a node (like its runtime) "
                "runs once; build a new one"
            )
        self._used = True
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(self._prepared())
            await self._runtime.start()
            for index, service in enumerate(self._services):
                await stack.enter_async_context(self._entering(index, service))
            self._stack = stack.pop_all()
        await self._logger.ainfo("node.running", services=sorted(self.service_statuses))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await self._logger.ainfo("node.stopping")
            await stack.aclose()
            await self._logger.ainfo("node.stopped")

    @asynccontextmanager
    async def prepared(self) -> AsyncIterator[EventRuntime]:
        """The database open and the registrations made, the runtime not started.

        For callers that start the runtime themselves (``await
        container.runtime()``): on exit the runtime is stopped if it was started,
        then the database closed.
        """
        if self._used:
            raise NodeLifecycleError(f"node '{self.node_id}' has already run")
        self._used = True
        async with self._prepared():
            yield self._runtime

    async def run_until_signalled(
        self, signals: Sequence[signal.Signals] = (signal.SIGINT, signal.SIGTERM)
    ) -> None:
        """Start the node, run until one of ``signals`` arrives, stop gracefully."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in signals:
            loop.add_signal_handler(signum, stop.set)
        try:
            async with self:
                await stop.wait()
        finally:
            for signum in signals:
                loop.remove_signal_handler(signum)

    @asynccontextmanager
    async def _prepared(self) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            if self._database is not None:
                await stack.enter_async_context(self._database)
            # Stopping is idempotent and does nothing for a runtime never started.
            stack.push_async_callback(self._runtime.stop)
            await self._runtime.register_all(self._registrations)
            yield

    @asynccontextmanager
    async def _entering(self, index: int, service: NodeService) -> AsyncIterator[None]:
        async with service:
            self._entered.add(index)
            try:
                yield
            finally:
                self._entered.discard(index)

    def _service_status(self, index: int, service: NodeService) -> ProcessStatus:
        if isinstance(service, ObservableService):
            return service.status
        if index in self._entered:
            return ProcessStatus.RUNNING
        return ProcessStatus.STOPPED if self._used else ProcessStatus.INITIALISED


def _unique_names(services: Sequence[NodeService]) -> list[str]:
    names: list[str] = []
    for service in services:
        base = (
            service.name
            if isinstance(service, ObservableService)
            else type(service).__name__
        )
        name, suffix = base, 2
        while name in names:
            name, suffix = f"{base}#{suffix}", suffix + 1
        names.append(name)
    return names
