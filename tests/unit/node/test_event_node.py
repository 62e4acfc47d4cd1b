"""EventNode: the order in which a node opens and closes its parts.

The runtime is real (an in-memory distributed broker and logicblocks' service
manager); the database and the extra services are recording fakes.
"""

import asyncio
import os
import signal
from types import TracebackType
from typing import Self

import pytest
from logicblocks.event.processing import ProcessStatus, ServiceManager
from logicblocks.event.processing.broker import (
    EventBrokerStorageType,
    EventBrokerType,
)
from logicblocks.event.types import CategoryIdentifier
from structlog.testing import capture_logs

from eventcomposition import (
    BrokerRole,
    DistributedEventBrokerSettings,
    EventNode,
    EventRuntime,
    InMemoryClusterState,
    make_event_broker,
)
from eventcomposition.node import NodeLifecycleError
from eventcomposition.runtime import SubscriberRegistration
from eventcomposition.testing.capture import CapturingSubscriber
from eventcomposition.testing.waiting import wait_until


class Boom(Exception):
    pass


def make_runtime(role: BrokerRole = BrokerRole.FULL) -> EventRuntime:
    broker = make_event_broker(
        "node-1",
        EventBrokerType.Distributed,
        EventBrokerStorageType.InMemory,
        settings=DistributedEventBrokerSettings(role=role),
        cluster_state=InMemoryClusterState(),
    )
    return EventRuntime("node-1", broker, ServiceManager(), role=role)


class Recorder:
    """A part of a node (database or service) that writes to a shared journal what
    it saw of the runtime when it was entered and exited."""

    def __init__(
        self,
        name: str,
        journal: list[str],
        runtime: EventRuntime,
        *,
        fail_on_enter: bool = False,
    ) -> None:
        self.name = name
        self._journal = journal
        self._runtime = runtime
        self._fail_on_enter = fail_on_enter

    def _runtime_state(self) -> str:
        if self._runtime.stopped:
            return "stopped"
        return "started" if self._runtime.started else "new"

    async def __aenter__(self) -> Self:
        self._journal.append(f"enter {self.name} (runtime {self._runtime_state()})")
        if self._fail_on_enter:
            raise Boom(f"{self.name} cannot start")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._journal.append(f"exit {self.name} (runtime {self._runtime_state()})")


class ObservedService(Recorder):
    """A service that reports its own name and status."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.status = ProcessStatus.INITIALISED

    async def __aenter__(self) -> Self:
        await super().__aenter__()
        self.status = ProcessStatus.RUNNING
        return self


async def test_parts_open_in_order_and_close_in_reverse() -> None:
    journal: list[str] = []
    runtime = make_runtime()
    node = EventNode(
        runtime,
        database=Recorder("database", journal, runtime),
        services=[
            Recorder("listener", journal, runtime),
            Recorder("http", journal, runtime),
        ],
    )

    async with node:
        journal.append("running")

    assert journal == [
        "enter database (runtime new)",
        "enter listener (runtime started)",
        "enter http (runtime started)",
        "running",
        "exit http (runtime started)",
        "exit listener (runtime started)",
        "exit database (runtime stopped)",
    ]
    assert runtime.stopped


async def test_a_service_failing_to_start_unwinds_what_started_in_reverse() -> None:
    journal: list[str] = []
    runtime = make_runtime()
    node = EventNode(
        runtime,
        database=Recorder("database", journal, runtime),
        services=[
            Recorder("listener", journal, runtime),
            Recorder("http", journal, runtime, fail_on_enter=True),
            Recorder("never", journal, runtime),
        ],
    )

    with pytest.raises(Boom, match="http cannot start"):
        async with node:
            journal.append("running")

    assert journal == [
        "enter database (runtime new)",
        "enter listener (runtime started)",
        "enter http (runtime started)",
        "exit listener (runtime started)",
        "exit database (runtime stopped)",
    ]
    assert runtime.stopped
    assert node.status is ProcessStatus.STOPPED


async def test_a_database_failing_to_open_starts_nothing() -> None:
    journal: list[str] = []
    runtime = make_runtime()
    node = EventNode(
        runtime,
        database=Recorder("database", journal, runtime, fail_on_enter=True),
        services=[Recorder("listener", journal, runtime)],
    )

    with pytest.raises(Boom):
        async with node:
            pass

    assert journal == ["enter database (runtime new)"]
    assert not runtime.started


async def test_registrations_are_made_when_the_node_opens() -> None:
    runtime = make_runtime(BrokerRole.OBSERVER)
    subscriber = CapturingSubscriber(
        "totals", "s-1", [CategoryIdentifier(category="orders")]
    )
    node = EventNode(runtime, registrations=[SubscriberRegistration(subscriber)])

    async with node:
        assert node.role is BrokerRole.OBSERVER
        assert node.node_id == "node-1"


async def test_a_coordinator_node_skips_its_registrations_and_says_so() -> None:
    runtime = make_runtime(BrokerRole.COORDINATOR)
    subscriber = CapturingSubscriber(
        "totals", "s-1", [CategoryIdentifier(category="orders")]
    )
    node = EventNode(runtime, registrations=[SubscriberRegistration(subscriber)])

    with capture_logs() as logs:
        async with node:
            pass

    skipped = [
        log for log in logs if log["event"] == "runtime.consumers-not-registered"
    ]
    assert len(skipped) == 1
    assert skipped[0]["declared"] == 1
    assert skipped[0]["role"] == "coordinator"


def status_of(node: EventNode) -> ProcessStatus:
    # A call, so that the type checker does not narrow a property across changes.
    return node.status


async def test_statuses_cover_the_runtime_and_every_service() -> None:
    runtime = make_runtime()
    journal: list[str] = []
    observed = ObservedService("listener", journal, runtime)
    plain = Recorder("http", journal, runtime)
    node = EventNode(
        runtime, services=[observed, plain, Recorder("x", journal, runtime)]
    )

    assert status_of(node) is ProcessStatus.INITIALISED
    assert node.service_statuses["listener"] is ProcessStatus.INITIALISED
    async with node:
        await wait_until(
            lambda: node.status is ProcessStatus.RUNNING, description="node running"
        )
        statuses = node.service_statuses
        assert statuses["listener"] is ProcessStatus.RUNNING
        assert statuses["Recorder"] is ProcessStatus.RUNNING
        assert statuses["Recorder#2"] is ProcessStatus.RUNNING
        assert "event-broker" in statuses

        observed.status = ProcessStatus.ERRORED
        assert status_of(node) is ProcessStatus.ERRORED
    assert status_of(node) is ProcessStatus.STOPPED
    assert node.service_statuses["Recorder"] is ProcessStatus.STOPPED


async def test_a_started_node_is_never_initialised() -> None:
    # Right after entry no service task has run yet: the runtime has started all
    # the same, and says so.
    runtime = make_runtime()
    async with EventNode(runtime) as node:
        assert runtime.status is not ProcessStatus.INITIALISED
        assert status_of(node) is not ProcessStatus.INITIALISED
        assert ProcessStatus.INITIALISED not in node.service_statuses.values()
        await wait_until(
            lambda: node.status is ProcessStatus.RUNNING, description="node running"
        )


async def test_a_node_runs_once() -> None:
    node = EventNode(make_runtime())
    async with node:
        pass

    with pytest.raises(NodeLifecycleError, match="runs once"):
        async with node:
            pass


async def test_prepared_registers_without_starting_and_stops_on_exit() -> None:
    journal: list[str] = []
    runtime = make_runtime()
    node = EventNode(runtime, database=Recorder("database", journal, runtime))

    async with node.prepared() as prepared:
        assert prepared is runtime
        assert not runtime.started
        await runtime.start()

    assert runtime.stopped
    assert journal == [
        "enter database (runtime new)",
        "exit database (runtime stopped)",
    ]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_run_until_signalled_stops_gracefully(signum: signal.Signals) -> None:
    journal: list[str] = []
    runtime = make_runtime()
    node = EventNode(runtime, services=[Recorder("listener", journal, runtime)])

    running = asyncio.create_task(node.run_until_signalled())
    await wait_until(lambda: journal == ["enter listener (runtime started)"])
    os.kill(os.getpid(), signum)
    await asyncio.wait_for(running, timeout=10)

    assert journal[-1] == "exit listener (runtime started)"
    assert runtime.stopped


class NodeReader(Recorder):
    """A service that reads the node it serves."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.node: EventNode | None = None

    def attach_node(self, node: EventNode) -> None:
        self.node = node


async def test_services_that_read_the_node_are_given_it_when_it_is_built() -> None:
    runtime = make_runtime()
    journal: list[str] = []
    reader = NodeReader("http", journal, runtime)
    plain = Recorder("listener", journal, runtime)

    node = EventNode(runtime, services=[plain, reader])

    assert reader.node is node
    assert not hasattr(plain, "node")
