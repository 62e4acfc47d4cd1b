"""The role-aware broker runs exactly the parts its role needs.

Fakes stand in for logicblocks' subscriber manager, coordinator and observer and
count how often each part starts and is cancelled.
"""

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any, Self

import pytest
import structlog
from logicblocks.event.processing import ProcessStatus
from logicblocks.event.processing.broker import (
    DistributedEventBroker as LogicblocksDistributedEventBroker,
)
from logicblocks.event.processing.broker import (
    EventSubscriber,
)
from logicblocks.event.processing.broker.strategies.distributed import (
    EventSubscriberManager,
    EventSubscriptionCoordinator,
    EventSubscriptionObserver,
)
from logicblocks.event.types import (
    CategoryIdentifier,
    StoredEvent,
)

from eventcomposition import (
    Backoff,
    BrokerRole,
    BrokerRoleError,
    DistributedEventBroker,
)
from eventcomposition.broker import broker as broker_module
from eventcomposition.testing.capture import CapturingSubscriber
from eventcomposition.testing.waiting import wait_until


class Part:
    """A long-running part of the broker that counts starts and cancellations."""

    def __init__(self) -> None:
        self.starts = 0
        self.cancellations = 0
        self._failure: Exception | None = None
        self._wake = asyncio.Event()

    def fail(self, error: Exception) -> None:
        """Make the running part raise ``error``."""
        self._failure = error
        self._wake.set()

    async def run(self) -> None:
        self.starts += 1
        try:
            await self._wake.wait()
        except asyncio.CancelledError:
            self.cancellations += 1
            raise
        self._wake.clear()
        assert self._failure is not None
        raise self._failure


class FakeCoordinator(EventSubscriptionCoordinator):
    def __init__(self, status: ProcessStatus = ProcessStatus.RUNNING) -> None:
        self.part = Part()
        self.fixed_status = status

    @property
    def status(self) -> ProcessStatus:
        return self.fixed_status

    async def coordinate(self) -> None:
        await self.part.run()


class FakeObserver(EventSubscriptionObserver[StoredEvent]):
    def __init__(self, status: ProcessStatus = ProcessStatus.RUNNING) -> None:
        self.part = Part()
        self.fixed_status = status

    @property
    def status(self) -> ProcessStatus:
        return self.fixed_status

    async def observe(self) -> None:
        await self.part.run()


class FakeSubscriberManager(EventSubscriberManager[StoredEvent]):
    def __init__(self) -> None:
        self.maintenance = Part()
        self.starts = 0
        self.stops = 0
        self.fail_to_stop: Exception | None = None
        self.added: list[EventSubscriber[StoredEvent]] = []

    async def add(self, subscriber: EventSubscriber[StoredEvent]) -> Self:
        self.added.append(subscriber)
        return self

    async def start(self) -> None:
        self.starts += 1

    async def maintain(self) -> None:
        await self.maintenance.run()

    async def stop(self) -> None:
        self.stops += 1
        if self.fail_to_stop is not None:
            raise self.fail_to_stop


class Node:
    def __init__(
        self,
        role: BrokerRole | None,
        coordinator_status: ProcessStatus = ProcessStatus.RUNNING,
        observer_status: ProcessStatus = ProcessStatus.RUNNING,
    ) -> None:
        self.manager = FakeSubscriberManager()
        self.coordinator = FakeCoordinator(coordinator_status)
        self.observer = FakeObserver(observer_status)
        backoff = Backoff(
            initial=timedelta(milliseconds=1), maximum=timedelta(milliseconds=5)
        )
        if role is None:
            self.broker = DistributedEventBroker[StoredEvent](
                self.manager, self.coordinator, self.observer, restart_backoff=backoff
            )
        else:
            self.broker = DistributedEventBroker[StoredEvent](
                self.manager,
                self.coordinator,
                self.observer,
                role=role,
                restart_backoff=backoff,
            )


def parts_started(node: Node, runs: int = 1) -> bool:
    role = node.broker.role
    return (
        node.manager.maintenance.starts == runs
        and node.coordinator.part.starts == (runs if role.coordinates else 0)
        and node.observer.part.starts == (runs if role.observes else 0)
    )


@asynccontextmanager
async def running(node: Node) -> AsyncIterator[None]:
    task = asyncio.create_task(node.broker.execute())
    await wait_until(lambda: parts_started(node), description="broker parts started")
    yield
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def run_then_stop(node: Node) -> None:
    async with running(node):
        pass


@pytest.mark.parametrize(
    ("role", "coordinates", "observes"),
    [
        (BrokerRole.FULL, True, True),
        (BrokerRole.COORDINATOR, True, False),
        (BrokerRole.OBSERVER, False, True),
    ],
)
async def test_each_role_runs_only_its_parts(
    role: BrokerRole, coordinates: bool, observes: bool
) -> None:
    node = Node(role)

    await run_then_stop(node)

    assert node.coordinator.part.starts == int(coordinates)
    assert node.coordinator.part.cancellations == int(coordinates)
    assert node.observer.part.starts == int(observes)
    assert node.observer.part.cancellations == int(observes)


@pytest.mark.parametrize("role", list(BrokerRole))
async def test_subscriber_manager_runs_in_every_role(role: BrokerRole) -> None:
    node = Node(role)

    await run_then_stop(node)

    assert node.manager.starts == 1
    assert node.manager.maintenance.starts == 1
    assert node.manager.maintenance.cancellations == 1
    assert node.manager.stops == 1


async def test_full_is_the_default_role() -> None:
    node = Node(role=None)

    assert node.broker.role is BrokerRole.FULL
    await run_then_stop(node)
    assert node.coordinator.part.starts == 1
    assert node.observer.part.starts == 1


def test_role_accepts_its_string_value() -> None:
    node = Node(BrokerRole("observer"))

    assert node.broker.role is BrokerRole.OBSERVER


async def test_coordinator_rejects_registration_with_a_clear_error() -> None:
    node = Node(BrokerRole.COORDINATOR)

    with pytest.raises(BrokerRoleError) as raised:
        await node.broker.register(
            CapturingSubscriber(
                "projections", "subscriber-1", [CategoryIdentifier(category="orders")]
            )
        )

    assert isinstance(raised.value, RuntimeError)
    assert "'coordinator'" in str(raised.value)
    assert "projections/subscriber-1" in str(raised.value)
    assert node.manager.added == []


@pytest.mark.parametrize("role", [BrokerRole.OBSERVER, BrokerRole.FULL])
async def test_observer_and_full_accept_registration(role: BrokerRole) -> None:
    node = Node(role)
    subscriber = CapturingSubscriber(
        "projections", "subscriber-1", [CategoryIdentifier(category="orders")]
    )

    await node.broker.register(subscriber)

    assert node.manager.added == [subscriber]


@pytest.mark.parametrize(
    ("role", "expected"),
    [
        (BrokerRole.COORDINATOR, ProcessStatus.WAITING),
        (BrokerRole.OBSERVER, ProcessStatus.ERRORED),
        (BrokerRole.FULL, ProcessStatus.ERRORED),
    ],
)
def test_status_reflects_the_parts_the_role_runs(
    role: BrokerRole, expected: ProcessStatus
) -> None:
    node = Node(
        role,
        coordinator_status=ProcessStatus.WAITING,
        observer_status=ProcessStatus.ERRORED,
    )

    assert node.broker.status is expected


def test_full_status_combines_coordinator_and_observer() -> None:
    node = Node(
        BrokerRole.FULL,
        coordinator_status=ProcessStatus.WAITING,
        observer_status=ProcessStatus.RUNNING,
    )

    assert node.broker.status is ProcessStatus.RUNNING


@pytest.mark.parametrize(
    ("role", "coordinator_restarts", "observer_restarts"),
    [
        (BrokerRole.COORDINATOR, 1, 0),
        (BrokerRole.OBSERVER, 0, 1),
        (BrokerRole.FULL, 1, 1),
    ],
)
async def test_a_failing_part_restarts_only_the_parts_the_role_runs(
    role: BrokerRole, coordinator_restarts: int, observer_restarts: int
) -> None:
    node = Node(role)

    async with running(node):
        node.manager.maintenance.fail(ValueError("lost the database"))
        await wait_until(lambda: parts_started(node, runs=2), description="restart")

    assert node.manager.starts == 2
    assert node.manager.stops == 2
    # Started once before the failure and once after it.
    assert node.coordinator.part.starts == 2 * coordinator_restarts
    assert node.observer.part.starts == 2 * observer_restarts


def observer_node(backoff: Backoff) -> Node:
    node = Node(BrokerRole.OBSERVER)
    node.broker = DistributedEventBroker[StoredEvent](
        node.manager,
        node.coordinator,
        node.observer,
        role=BrokerRole.OBSERVER,
        restart_backoff=backoff,
    )
    return node


async def fail_and_wait_for_restart(node: Node, runs: int) -> None:
    node.manager.maintenance.fail(ValueError(f"failure {runs}"))
    await wait_until(
        lambda: node.manager.maintenance.starts == runs + 1,
        description=f"restart {runs}",
    )


def restart_delays(logs: Sequence[Mapping[str, Any]]) -> list[float]:
    return [
        log["restart_delay_seconds"] for log in logs if log["event"] == "broker.failed"
    ]


async def test_first_restart_is_immediate_and_consecutive_failures_back_off() -> None:
    backoff = Backoff(
        initial=timedelta(milliseconds=40),
        maximum=timedelta(hours=1),
        jitter=0.5,
        random=lambda: 0.5,
    )
    node = observer_node(backoff)
    loop = asyncio.get_running_loop()

    with structlog.testing.capture_logs() as logs:
        async with running(node):
            await fail_and_wait_for_restart(node, runs=1)
            await fail_and_wait_for_restart(node, runs=2)
            failed_at = loop.time()
            await fail_and_wait_for_restart(node, runs=3)
            third_restart_after = loop.time() - failed_at

    # Jitter takes 0.5 * 0.5 of each delay off: 40 ms -> 30 ms, 80 ms -> 60 ms.
    assert restart_delays(logs) == [0.0, 0.03, 0.06]
    assert third_restart_after >= 0.06


async def test_a_run_longer_than_the_backoff_maximum_starts_a_new_series() -> None:
    backoff = Backoff(
        initial=timedelta(milliseconds=10), maximum=timedelta(milliseconds=500)
    )
    node = observer_node(backoff)

    with structlog.testing.capture_logs() as logs:
        async with running(node):
            await fail_and_wait_for_restart(node, runs=1)
            await fail_and_wait_for_restart(node, runs=2)
            await asyncio.sleep(0.6)  # a healthy run: longer than the maximum
            await fail_and_wait_for_restart(node, runs=3)

    delays = restart_delays(logs)
    assert delays[0] == 0.0
    assert delays[1] > 0.0
    assert delays[2] == 0.0


async def test_a_new_execute_starts_without_the_pending_restart_wait() -> None:
    node = observer_node(
        Backoff(initial=timedelta(hours=1), maximum=timedelta(hours=1))
    )
    async with running(node):
        await fail_and_wait_for_restart(node, runs=1)
        node.manager.maintenance.fail(ValueError("second failure"))
        await wait_until(lambda: node.manager.stops == 2, description="2nd failure")

    # The hour-long wait belonged to the cancelled execute.
    task = asyncio.create_task(node.broker.execute())
    await wait_until(lambda: node.manager.maintenance.starts == 3, description="run")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


class RaisingLogger:
    """A logger whose writes fail, as when its output pipe is closed."""

    def __init__(self) -> None:
        self.writes = 0

    def __getattr__(self, name: str) -> Any:
        def fail(*args: Any, **kwargs: Any) -> None:
            self.writes += 1
            raise BrokenPipeError("log output closed")

        return fail


async def test_failing_log_writes_are_backed_off_like_any_failure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    failing_logger = RaisingLogger()
    monkeypatch.setattr(broker_module, "logger", failing_logger)
    node = observer_node(
        Backoff(initial=timedelta(hours=1), maximum=timedelta(hours=1))
    )

    async with running(node):
        node.manager.maintenance.fail(ValueError("lost the database"))
        await wait_until(lambda: failing_logger.writes >= 3, description="3 writes")
        # Long enough to see a tight loop of restarts that skipped the wait.
        await asyncio.sleep(0.1)

        # The failure, the immediate restart (whose log write failed too), then
        # the hour-long wait: nothing more.
        assert failing_logger.writes == 3
        assert node.manager.maintenance.starts == 1


def test_is_a_logicblocks_distributed_broker() -> None:
    assert isinstance(
        Node(BrokerRole.OBSERVER).broker, LogicblocksDistributedEventBroker
    )


async def test_a_failure_to_unregister_while_stopping_does_not_restart_the_broker() -> (
    None
):
    node = Node(BrokerRole.OBSERVER)
    node.manager.fail_to_stop = ConnectionError("pool closed")
    task = asyncio.create_task(node.broker.execute())
    await wait_until(lambda: parts_started(node))

    task.cancel()

    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, timeout=5)
    assert node.manager.starts == 1
