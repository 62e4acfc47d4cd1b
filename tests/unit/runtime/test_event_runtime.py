"""Unit tests of EventRuntime (mocked broker and service manager) and of the
ConsumerService that drives each consumer (real event loop, no mocks needed)."""

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from types import SimpleNamespace
from typing import Any
from unittest.mock import NonCallableMagicMock, call

import pytest
import structlog
from logicblocks.event.processing import (
    CallableService,
    ContinueErrorHandler,
    DeferredFuture,
    ErrorHandler,
    ErrorHandlerDecision,
    ErrorHandlingService,
    EventBroker,
    EventBrokerStorageType,
    EventBrokerType,
    EventConsumer,
    EventSubscriptionConsumer,
    ExecutionMode,
    IsolationMode,
    ProcessStatus,
    RaiseErrorHandler,
    RetryErrorHandler,
    ServiceManager,
)
from logicblocks.event.sources import EventSource
from logicblocks.event.types import (
    CategoryIdentifier,
    EventSourceIdentifier,
    StoredEvent,
)
from pytest_mock import MockerFixture

from eventcomposition import (
    Backoff,
    BrokerRole,
    BrokerRoleError,
    DistributedEventBrokerSettings,
    EventConsumerSettings,
    EventRuntime,
    InMemoryClusterState,
    RuntimeLifecycleError,
    make_event_broker,
)
from eventcomposition.runtime import BROKER_SERVICE_NAME, ConsumerService
from eventcomposition.testing.waiting import wait_until

# --- helpers ----------------------------------------------------------------------


class Boom(Exception):
    pass


class OrdersProjector(EventConsumer):
    async def consume_all(self) -> None:
        return None


class NamedConsumer(EventConsumer):
    def __init__(self, name: object) -> None:
        self.name = name

    async def consume_all(self) -> None:
        return None


class ScriptedConsumer(EventConsumer):
    """Each ``consume_all`` waits for its outcome: ``None`` succeeds, an exception
    is raised. Lets a test hold a call in progress and decide how it ends."""

    def __init__(self, *outcomes: BaseException | None) -> None:
        self.outcomes: asyncio.Queue[BaseException | None] = asyncio.Queue()
        for outcome in outcomes:
            self.outcomes.put_nowait(outcome)
        self.calls = 0
        self.completed = 0
        self.call_times: list[float] = []

    async def consume_all(self) -> None:
        self.calls += 1
        self.call_times.append(time.monotonic())
        outcome = await self.outcomes.get()
        if outcome is not None:
            raise outcome
        self.completed += 1


def _no_delegates(source: EventSource[EventSourceIdentifier, Any]) -> EventConsumer:
    raise AssertionError(f"no source is allocated in unit tests, got {source}")


def subscription_consumer(
    group: str = "orders-projection", id: str = "subscriber-1"
) -> EventSubscriptionConsumer[StoredEvent]:
    return EventSubscriptionConsumer[StoredEvent](
        group=group,
        id=id,
        subscription_requests=[CategoryIdentifier(category="orders")],
        delegate_factory=_no_delegates,
    )


def fast_settings(**overrides: Any) -> EventConsumerSettings:
    values: dict[str, Any] = {"poll_interval": timedelta(0)}
    values.update(overrides)
    return EventConsumerSettings(**values)


def registered_service(service_manager: NonCallableMagicMock, name: str) -> Any:
    for registration in service_manager.register.call_args_list:
        if registration.kwargs.get("name") == name:
            return registration.args[0]
    raise AssertionError(f"no service named {name!r} was registered")


def registered_consumer_service(
    service_manager: NonCallableMagicMock, name: str
) -> ConsumerService:
    service = registered_service(service_manager, name)
    assert isinstance(service, ConsumerService)
    return service


def registered_names(service_manager: NonCallableMagicMock) -> list[str]:
    return [c.kwargs["name"] for c in service_manager.register.call_args_list]


def status_of(service: ConsumerService) -> ProcessStatus:
    # A call, so that mypy does not narrow the status between two checks.
    return service.status


@contextlib.asynccontextmanager
async def running(service: ConsumerService) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(service.execute())
    try:
        yield task
    finally:
        if not task.done():
            task.cancel()
        with contextlib.suppress(BaseException):
            await task


# --- fixtures ---------------------------------------------------------------------


@pytest.fixture
def broker(mocker: MockerFixture) -> NonCallableMagicMock:
    mock: NonCallableMagicMock = mocker.create_autospec(EventBroker, instance=True)
    return mock


@pytest.fixture
def service_manager(mocker: MockerFixture) -> NonCallableMagicMock:
    mock: NonCallableMagicMock = mocker.create_autospec(ServiceManager, instance=True)
    # Like the real manager, it knows the services registered with it; it never
    # schedules them, so their futures stay unresolved (never done).
    states: dict[str, SimpleNamespace] = {}

    def register(service: Any, *, name: str, **_: Any) -> NonCallableMagicMock:
        states[name] = SimpleNamespace(service=service, future=DeferredFuture(name))
        return mock

    mock.register.side_effect = register
    mock.service.side_effect = states.get
    return mock


@pytest.fixture
def runtime(
    broker: NonCallableMagicMock, service_manager: NonCallableMagicMock
) -> EventRuntime:
    return EventRuntime("node-1", broker, service_manager)


@pytest.fixture
def error_handler(mocker: MockerFixture) -> NonCallableMagicMock:
    mock: NonCallableMagicMock = mocker.create_autospec(ErrorHandler, instance=True)
    mock.handle.return_value = ErrorHandlerDecision.continue_execution(value=None)
    return mock


# --- construction -----------------------------------------------------------------


def test_exposes_its_node_id(runtime: EventRuntime) -> None:
    assert runtime.node_id == "node-1"


# --- register_subscriber ----------------------------------------------------------


async def test_register_subscriber_delegates_to_the_broker(
    runtime: EventRuntime,
    broker: NonCallableMagicMock,
    service_manager: NonCallableMagicMock,
) -> None:
    subscriber = subscription_consumer()

    await runtime.register_subscriber(subscriber)

    broker.register.assert_awaited_once_with(subscriber)
    service_manager.register.assert_not_called()
    assert runtime.service_statuses == {}


# --- register_consumer ------------------------------------------------------------


async def test_register_consumer_registers_a_background_consumer_service(
    runtime: EventRuntime,
    broker: NonCallableMagicMock,
    service_manager: NonCallableMagicMock,
) -> None:
    consumer = OrdersProjector()

    name = await runtime.register_consumer(consumer)

    service_manager.register.assert_called_once()
    registration = service_manager.register.call_args
    service = registration.args[0]
    assert isinstance(service, ConsumerService)
    assert service.consumer is consumer
    assert isinstance(service.error_handling, ErrorHandlingService)
    assert registration.kwargs == {
        "name": name,
        "execution_mode": ExecutionMode.BACKGROUND,
        "isolation_mode": IsolationMode.MAIN_THREAD,
    }
    broker.register.assert_not_awaited()


async def test_register_consumer_handles_consume_all_errors_with_the_handler(
    mocker: MockerFixture,
    runtime: EventRuntime,
    service_manager: NonCallableMagicMock,
    error_handler: NonCallableMagicMock,
) -> None:
    consumer = mocker.create_autospec(EventConsumer, instance=True)
    error = Boom("consume failed")
    consumer.consume_all.side_effect = error

    name = await runtime.register_consumer(
        consumer, fast_settings(error_handler=error_handler), name="failing"
    )
    service = registered_consumer_service(service_manager, name)
    await service.error_handling.execute()

    consumer.consume_all.assert_awaited_once()
    error_handler.handle.assert_called_once_with(error)


async def test_register_consumer_keeps_polling_after_handled_errors(
    runtime: EventRuntime,
    service_manager: NonCallableMagicMock,
    error_handler: NonCallableMagicMock,
) -> None:
    # Error handling inside polling: each failing poll is handled, and polling goes
    # on to the next one.
    consumer = ScriptedConsumer(Boom("first"), Boom("second"), None)
    name = await runtime.register_consumer(
        consumer, fast_settings(error_handler=error_handler)
    )
    service = registered_consumer_service(service_manager, name)

    async with running(service) as task:
        await wait_until(lambda: consumer.completed == 1, description="a success")
        service.request_drain()
        consumer.outcomes.put_nowait(None)
        await asyncio.wait_for(task, timeout=2)

    assert consumer.calls >= 3
    assert [c.args[0].args for c in error_handler.handle.call_args_list] == [
        ("first",),
        ("second",),
    ]


async def test_register_consumer_uses_the_given_settings(
    broker: NonCallableMagicMock,
    service_manager: NonCallableMagicMock,
    error_handler: NonCallableMagicMock,
) -> None:
    defaults = EventConsumerSettings(
        poll_interval=timedelta(seconds=7), isolation_mode=IsolationMode.MAIN_THREAD
    )
    runtime = EventRuntime(
        "node-1", broker, service_manager, default_consumer_settings=defaults
    )
    given = EventConsumerSettings(
        error_handler=error_handler,
        poll_interval=timedelta(milliseconds=250),
        isolation_mode=IsolationMode.DEDICATED_THREAD,
    )

    name = await runtime.register_consumer(OrdersProjector(), given)

    service = registered_consumer_service(service_manager, name)
    assert service.settings is given
    assert service.settings.poll_interval == timedelta(milliseconds=250)
    assert (
        service_manager.register.call_args.kwargs["isolation_mode"]
        is IsolationMode.DEDICATED_THREAD
    )


async def test_register_consumer_handles_errors_with_the_given_error_handler(
    mocker: MockerFixture,
    broker: NonCallableMagicMock,
    service_manager: NonCallableMagicMock,
    error_handler: NonCallableMagicMock,
) -> None:
    default_handler = mocker.create_autospec(ErrorHandler, instance=True)
    runtime = EventRuntime(
        "node-1",
        broker,
        service_manager,
        default_consumer_settings=EventConsumerSettings(error_handler=default_handler),
    )
    consumer = mocker.create_autospec(EventConsumer, instance=True)
    error = Boom()
    consumer.consume_all.side_effect = error

    name = await runtime.register_consumer(
        consumer, EventConsumerSettings(error_handler=error_handler), name="c"
    )
    await registered_consumer_service(service_manager, name).error_handling.execute()

    error_handler.handle.assert_called_once_with(error)
    default_handler.handle.assert_not_called()


async def test_register_consumer_uses_the_runtime_defaults_when_none_are_given(
    mocker: MockerFixture,
    broker: NonCallableMagicMock,
    service_manager: NonCallableMagicMock,
    error_handler: NonCallableMagicMock,
) -> None:
    defaults = EventConsumerSettings(
        error_handler=error_handler,
        poll_interval=timedelta(milliseconds=100),
        isolation_mode=IsolationMode.SHARED_THREAD,
    )
    runtime = EventRuntime(
        "node-1", broker, service_manager, default_consumer_settings=defaults
    )
    consumer = mocker.create_autospec(EventConsumer, instance=True)
    error = Boom()
    consumer.consume_all.side_effect = error

    name = await runtime.register_consumer(consumer, name="c")

    service = registered_consumer_service(service_manager, name)
    assert service.settings is defaults
    assert (
        service_manager.register.call_args.kwargs["isolation_mode"]
        is IsolationMode.SHARED_THREAD
    )
    await service.error_handling.execute()
    error_handler.handle.assert_called_once_with(error)


async def test_register_consumer_uses_default_settings_when_the_runtime_has_none(
    mocker: MockerFixture,
    runtime: EventRuntime,
    service_manager: NonCallableMagicMock,
) -> None:
    consumer = mocker.create_autospec(EventConsumer, instance=True)
    consumer.consume_all.side_effect = Boom()

    name = await runtime.register_consumer(consumer, name="c")

    settings = registered_consumer_service(service_manager, name).settings
    assert isinstance(settings.error_handler, ContinueErrorHandler)
    assert settings.poll_interval == timedelta(seconds=1)
    assert settings.isolation_mode is IsolationMode.MAIN_THREAD
    assert settings.stop_timeout == timedelta(seconds=10)
    assert runtime.default_consumer_settings.poll_interval == timedelta(seconds=1)
    assert (
        service_manager.register.call_args.kwargs["isolation_mode"]
        is IsolationMode.MAIN_THREAD
    )
    # Continue: the failure is handled and the poll ends normally.
    service = registered_consumer_service(service_manager, name)
    assert await service.error_handling.execute() is None


# --- register_subscription_consumer -----------------------------------------------


async def test_a_source_accepted_through_the_broker_wakes_the_consumer(
    runtime: EventRuntime,
    broker: NonCallableMagicMock,
    service_manager: NonCallableMagicMock,
    mocker: MockerFixture,
) -> None:
    consumer = subscription_consumer("orders-projection", "subscriber-1")
    accept = mocker.patch.object(consumer, "accept", mocker.AsyncMock())
    withdraw = mocker.patch.object(consumer, "withdraw", mocker.AsyncMock())
    name = await runtime.register_subscription_consumer(consumer)
    subscriber = broker.register.await_args.args[0]
    service = registered_consumer_service(service_manager, name)
    wake = mocker.patch.object(service, "wake")
    source = mocker.Mock()

    await subscriber.withdraw(source)
    wake.assert_not_called()
    await subscriber.accept(source)

    withdraw.assert_awaited_once_with(source)
    accept.assert_awaited_once_with(source)
    wake.assert_called_once_with()


async def test_register_subscription_consumer_registers_with_broker_and_polls(
    runtime: EventRuntime,
    broker: NonCallableMagicMock,
    service_manager: NonCallableMagicMock,
    mocker: MockerFixture,
) -> None:
    order = mocker.Mock()
    order.attach_mock(broker.register, "broker_register")
    order.attach_mock(service_manager.register, "service_manager_register")
    consumer = subscription_consumer("orders-projection", "subscriber-1")
    settings = EventConsumerSettings(isolation_mode=IsolationMode.SHARED_THREAD)

    name = await runtime.register_subscription_consumer(consumer, settings)

    assert name == "orders-projection/subscriber-1"
    broker.register.assert_awaited_once()
    subscriber = broker.register.await_args.args[0]
    assert (subscriber.group, subscriber.id) == (consumer.group, consumer.id)
    assert subscriber.subscription_requests == consumer.subscription_requests
    service = registered_consumer_service(service_manager, name)
    assert service.consumer is consumer
    assert service.settings is settings
    service_manager.register.assert_called_once_with(
        service,
        name=name,
        execution_mode=ExecutionMode.BACKGROUND,
        isolation_mode=IsolationMode.SHARED_THREAD,
    )
    # The broker first: a refusal must leave no polling service behind.
    assert [c[0] for c in order.mock_calls] == [
        "broker_register",
        "service_manager_register",
    ]


# --- COORDINATOR brokers ----------------------------------------------------------


@pytest.fixture
def coordinator_runtime(service_manager: NonCallableMagicMock) -> EventRuntime:
    coordinator = make_event_broker(
        "coordinator-1",
        EventBrokerType.Distributed,
        EventBrokerStorageType.InMemory,
        settings=DistributedEventBrokerSettings(role=BrokerRole.COORDINATOR),
        cluster_state=InMemoryClusterState(),
    )
    return EventRuntime("coordinator-1", coordinator, service_manager)


async def test_coordinator_refusal_of_a_subscription_consumer_leaves_nothing(
    coordinator_runtime: EventRuntime, service_manager: NonCallableMagicMock
) -> None:
    with pytest.raises(BrokerRoleError) as raised:
        await coordinator_runtime.register_subscription_consumer(
            subscription_consumer()
        )

    assert raised.value.role is BrokerRole.COORDINATOR
    service_manager.register.assert_not_called()
    assert coordinator_runtime.service_statuses == {}


async def test_coordinator_refusal_of_a_subscriber_propagates(
    coordinator_runtime: EventRuntime, service_manager: NonCallableMagicMock
) -> None:
    with pytest.raises(BrokerRoleError):
        await coordinator_runtime.register_subscriber(subscription_consumer())

    service_manager.register.assert_not_called()
    assert coordinator_runtime.service_statuses == {}


async def test_coordinator_refusal_does_not_take_the_name(
    coordinator_runtime: EventRuntime, service_manager: NonCallableMagicMock
) -> None:
    consumer = subscription_consumer("g", "1")
    with pytest.raises(BrokerRoleError):
        await coordinator_runtime.register_subscription_consumer(consumer)

    # A plain consumer (no broker involved) may still run on a coordinator node.
    name = await coordinator_runtime.register_consumer(OrdersProjector(), name="g/1")

    assert name == "g/1"
    assert list(coordinator_runtime.service_statuses) == ["g/1"]


# --- lifecycle --------------------------------------------------------------------


async def test_start_registers_the_broker_then_starts_the_manager(
    runtime: EventRuntime,
    broker: NonCallableMagicMock,
    service_manager: NonCallableMagicMock,
) -> None:
    await runtime.register_consumer(OrdersProjector())

    await runtime.start()

    assert service_manager.mock_calls[-2:] == [
        call.register(
            broker,
            name="event-broker",
            execution_mode=ExecutionMode.BACKGROUND,
            isolation_mode=IsolationMode.MAIN_THREAD,
        ),
        call.start(),
    ]
    assert BROKER_SERVICE_NAME == "event-broker"
    service_manager.start.assert_awaited_once()
    assert runtime.started


async def test_stop_stops_the_manager(
    runtime: EventRuntime, service_manager: NonCallableMagicMock
) -> None:
    await runtime.start()

    await runtime.stop()

    service_manager.stop.assert_awaited_once()
    assert runtime.stopped


async def test_stop_is_idempotent(
    runtime: EventRuntime, service_manager: NonCallableMagicMock
) -> None:
    await runtime.start()

    await runtime.stop()
    await runtime.stop()
    await asyncio.gather(runtime.stop(), runtime.stop())

    service_manager.stop.assert_awaited_once()


async def test_concurrent_stops_stop_the_manager_once(
    runtime: EventRuntime, service_manager: NonCallableMagicMock
) -> None:
    await runtime.start()

    await asyncio.gather(runtime.stop(), runtime.stop(), runtime.stop())

    service_manager.stop.assert_awaited_once()


async def test_second_start_raises(
    runtime: EventRuntime, service_manager: NonCallableMagicMock
) -> None:
    await runtime.start()

    with pytest.raises(RuntimeLifecycleError, match="already started"):
        await runtime.start()

    service_manager.start.assert_awaited_once()


async def test_start_after_stop_raises(
    runtime: EventRuntime, service_manager: NonCallableMagicMock
) -> None:
    await runtime.start()
    await runtime.stop()

    with pytest.raises(RuntimeLifecycleError, match="stopped"):
        await runtime.start()

    service_manager.start.assert_awaited_once()


async def test_stop_before_start_makes_start_raise(
    runtime: EventRuntime, service_manager: NonCallableMagicMock
) -> None:
    await runtime.stop()

    with pytest.raises(RuntimeLifecycleError, match="stopped"):
        await runtime.start()

    service_manager.start.assert_not_awaited()
    service_manager.stop.assert_not_awaited()
    service_manager.register.assert_not_called()


def test_lifecycle_error_is_a_runtime_error() -> None:
    assert issubclass(RuntimeLifecycleError, RuntimeError)


type Registration = Callable[[EventRuntime], Any]

REGISTRATIONS: list[Any] = [
    pytest.param(
        lambda runtime: runtime.register_subscriber(subscription_consumer()),
        id="register_subscriber",
    ),
    pytest.param(
        lambda runtime: runtime.register_consumer(OrdersProjector()),
        id="register_consumer",
    ),
    pytest.param(
        lambda runtime: runtime.register_subscription_consumer(subscription_consumer()),
        id="register_subscription_consumer",
    ),
]


@pytest.mark.parametrize("register", REGISTRATIONS)
async def test_registering_after_start_raises(
    register: Registration,
    runtime: EventRuntime,
    broker: NonCallableMagicMock,
    service_manager: NonCallableMagicMock,
) -> None:
    await runtime.start()
    service_manager.register.reset_mock()

    with pytest.raises(RuntimeLifecycleError, match="before start"):
        await register(runtime)

    broker.register.assert_not_awaited()
    service_manager.register.assert_not_called()
    assert set(runtime.service_statuses) == {BROKER_SERVICE_NAME}


@pytest.mark.parametrize("register", REGISTRATIONS)
async def test_registering_after_stop_raises(
    register: Registration,
    runtime: EventRuntime,
    broker: NonCallableMagicMock,
    service_manager: NonCallableMagicMock,
) -> None:
    await runtime.start()
    await runtime.stop()
    service_manager.register.reset_mock()

    with pytest.raises(RuntimeLifecycleError, match="stopped"):
        await register(runtime)

    broker.register.assert_not_awaited()
    service_manager.register.assert_not_called()


async def test_async_with_starts_and_stops(
    runtime: EventRuntime, service_manager: NonCallableMagicMock
) -> None:
    async with runtime as entered:
        assert entered is runtime
        service_manager.start.assert_awaited_once()
        service_manager.stop.assert_not_awaited()

    service_manager.stop.assert_awaited_once()
    assert runtime.status is ProcessStatus.STOPPED


# --- names ------------------------------------------------------------------------


async def test_subscription_consumers_are_named_by_group_and_id(
    runtime: EventRuntime, service_manager: NonCallableMagicMock
) -> None:
    name = await runtime.register_subscription_consumer(
        subscription_consumer("orders-projection", "9f2c")
    )

    assert name == "orders-projection/9f2c"
    assert registered_names(service_manager) == ["orders-projection/9f2c"]
    assert list(runtime.service_statuses) == ["orders-projection/9f2c"]


async def test_consumers_are_named_by_their_name_attribute(
    runtime: EventRuntime,
) -> None:
    assert await runtime.register_consumer(NamedConsumer("audit-log")) == "audit-log"


@pytest.mark.parametrize("attribute", ["", None, 42])
async def test_consumers_without_a_usable_name_are_named_by_class(
    attribute: object, runtime: EventRuntime
) -> None:
    assert await runtime.register_consumer(NamedConsumer(attribute)) == "NamedConsumer"


async def test_consumers_without_a_name_are_named_by_class(
    runtime: EventRuntime,
) -> None:
    assert await runtime.register_consumer(OrdersProjector()) == "OrdersProjector"


async def test_an_explicit_name_wins(runtime: EventRuntime) -> None:
    name = await runtime.register_consumer(NamedConsumer("audit"), name="explicit")

    assert name == "explicit"


async def test_clashing_names_get_a_numbered_suffix(
    runtime: EventRuntime, service_manager: NonCallableMagicMock
) -> None:
    names = [await runtime.register_consumer(OrdersProjector()) for _ in range(3)]
    names.append(await runtime.register_subscription_consumer(subscription_consumer()))
    names.append(await runtime.register_subscription_consumer(subscription_consumer()))

    assert names == [
        "OrdersProjector",
        "OrdersProjector#2",
        "OrdersProjector#3",
        "orders-projection/subscriber-1",
        "orders-projection/subscriber-1#2",
    ]
    assert registered_names(service_manager) == names
    assert list(runtime.service_statuses) == names


async def test_a_consumer_never_takes_the_broker_name(
    runtime: EventRuntime, service_manager: NonCallableMagicMock
) -> None:
    name = await runtime.register_consumer(NamedConsumer(BROKER_SERVICE_NAME))

    assert name == "event-broker#2"
    await runtime.start()
    assert registered_names(service_manager) == ["event-broker#2", "event-broker"]


# --- status -----------------------------------------------------------------------


async def test_status_is_initialised_before_start(runtime: EventRuntime) -> None:
    name = await runtime.register_consumer(OrdersProjector())

    assert runtime.status is ProcessStatus.INITIALISED
    assert runtime.service_statuses == {name: ProcessStatus.INITIALISED}


async def test_status_is_starting_once_start_returns() -> None:
    broker = make_event_broker(
        "node-1",
        EventBrokerType.Distributed,
        EventBrokerStorageType.InMemory,
        settings=DistributedEventBrokerSettings(),
        cluster_state=InMemoryClusterState(),
    )
    runtime = EventRuntime("node-1", broker, ServiceManager())
    name = await runtime.register_consumer(OrdersProjector())

    await runtime.start()
    try:
        # No service task has run yet: each has been started all the same.
        assert runtime.status is ProcessStatus.STARTING
        assert runtime.service_statuses[name] is ProcessStatus.STARTING
        await wait_until(
            lambda: runtime.status is ProcessStatus.RUNNING,
            description="runtime running",
        )
    finally:
        await runtime.stop()


async def test_status_is_stopped_after_stop(runtime: EventRuntime) -> None:
    await runtime.register_consumer(OrdersProjector())
    await runtime.start()

    await runtime.stop()

    assert runtime.status is ProcessStatus.STOPPED


async def test_status_is_stopped_after_stop_before_start(
    runtime: EventRuntime,
) -> None:
    await runtime.stop()

    assert runtime.status is ProcessStatus.STOPPED


async def test_status_combines_the_broker_and_the_consumers(
    mocker: MockerFixture,
    runtime: EventRuntime,
    broker: NonCallableMagicMock,
    service_manager: NonCallableMagicMock,
) -> None:
    broker.status = ProcessStatus.RUNNING
    healthy = ScriptedConsumer(None)
    failing = ScriptedConsumer(Boom())
    healthy_name = await runtime.register_consumer(healthy, name="healthy")
    failing_name = await runtime.register_consumer(failing, name="failing")
    await runtime.start()

    # One poll each, as the service manager would run them.
    await registered_consumer_service(
        service_manager, healthy_name
    ).error_handling.execute()
    await registered_consumer_service(
        service_manager, failing_name
    ).error_handling.execute()

    assert runtime.service_statuses == {
        "healthy": ProcessStatus.RUNNING,
        "failing": ProcessStatus.ERRORED,
        BROKER_SERVICE_NAME: ProcessStatus.RUNNING,
    }
    assert runtime.status is ProcessStatus.ERRORED


async def test_a_broker_whose_service_ended_shows_as_errored(
    mocker: MockerFixture,
    runtime: EventRuntime,
    broker: NonCallableMagicMock,
    service_manager: NonCallableMagicMock,
) -> None:
    broker.status = ProcessStatus.RUNNING
    ended = mocker.Mock()
    ended.future.done.return_value = True
    service_manager.service.side_effect = lambda name: (
        ended if name == BROKER_SERVICE_NAME else None
    )
    await runtime.start()

    assert runtime.service_statuses[BROKER_SERVICE_NAME] is ProcessStatus.ERRORED


# --- stop with a real service manager ---------------------------------------------


@pytest.fixture
def idle_broker(mocker: MockerFixture) -> NonCallableMagicMock:
    """A broker that runs until cancelled, as a real one does."""
    mock: NonCallableMagicMock = mocker.create_autospec(EventBroker, instance=True)
    mock.cancelled = False

    async def run_until_cancelled() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            mock.cancelled = True
            raise

    mock.execute.side_effect = run_until_cancelled
    return mock


async def test_stop_lets_the_consume_all_in_progress_finish_before_the_broker_stops(
    idle_broker: NonCallableMagicMock,
) -> None:
    runtime = EventRuntime("node-1", idle_broker, ServiceManager())
    consumer = ScriptedConsumer()
    await runtime.register_consumer(consumer, fast_settings())
    await runtime.start()
    await wait_until(lambda: consumer.calls == 1, description="a consume_all")

    stopping = asyncio.create_task(runtime.stop())
    await asyncio.sleep(0.02)
    assert not stopping.done()
    stopping_status = runtime.status
    assert stopping_status is ProcessStatus.STOPPING
    assert not idle_broker.cancelled

    consumer.outcomes.put_nowait(None)
    await asyncio.wait_for(stopping, timeout=2)

    assert consumer.completed == 1
    assert consumer.calls == 1
    assert idle_broker.cancelled
    assert runtime.status is ProcessStatus.STOPPED


async def test_stop_gives_up_on_a_consumer_after_its_stop_timeout(
    idle_broker: NonCallableMagicMock,
) -> None:
    runtime = EventRuntime("node-1", idle_broker, ServiceManager())
    consumer = ScriptedConsumer()  # never gets an outcome: consume_all hangs
    name = await runtime.register_consumer(
        consumer, fast_settings(stop_timeout=timedelta(milliseconds=50))
    )
    await runtime.start()
    await wait_until(lambda: consumer.calls == 1, description="a consume_all")

    with structlog.testing.capture_logs() as logs:
        await asyncio.wait_for(runtime.stop(), timeout=2)

    assert consumer.completed == 0
    assert idle_broker.cancelled
    assert runtime.service_statuses[name] is ProcessStatus.STOPPED
    assert any(
        log["event"] == "runtime.consumer-drain-timed-out" and log["service"] == name
        for log in logs
    )


# --- ConsumerService --------------------------------------------------------------


async def test_consumer_service_drains_the_consume_all_in_progress() -> None:
    consumer = ScriptedConsumer()
    service = ConsumerService("drained", consumer, fast_settings())

    async with running(service) as task:
        await wait_until(lambda: consumer.calls == 1, description="a consume_all")
        service.request_drain()
        assert status_of(service) is ProcessStatus.STOPPING
        await asyncio.sleep(0.02)
        assert not task.done(), "execute() returned while consume_all was running"

        consumer.outcomes.put_nowait(None)
        await asyncio.wait_for(task, timeout=2)

    assert consumer.completed == 1
    assert consumer.calls == 1
    assert status_of(service) is ProcessStatus.STOPPED


async def test_consumer_service_waits_the_poll_interval_and_drain_interrupts_it() -> (
    None
):
    consumer = ScriptedConsumer(None, None)
    service = ConsumerService(
        "slow-poller", consumer, fast_settings(poll_interval=timedelta(hours=1))
    )

    async with running(service) as task:
        await wait_until(lambda: consumer.completed == 1, description="one poll")
        await asyncio.sleep(0.02)
        assert consumer.calls == 1, "polled again before the poll interval"

        service.request_drain()
        await asyncio.wait_for(task, timeout=2)

    assert consumer.calls == 1
    assert status_of(service) is ProcessStatus.STOPPED


async def test_consumer_service_drained_before_it_runs_consumes_nothing() -> None:
    consumer = ScriptedConsumer(None)
    service = ConsumerService("early", consumer, fast_settings())

    service.request_drain()
    await asyncio.wait_for(service.execute(), timeout=2)

    assert consumer.calls == 0
    assert status_of(service) is ProcessStatus.STOPPED


async def test_consumer_service_status_follows_failures_and_recoveries() -> None:
    consumer = ScriptedConsumer()
    service = ConsumerService("flaky", consumer, fast_settings())
    assert status_of(service) is ProcessStatus.INITIALISED

    async with running(service) as task:
        await wait_until(lambda: consumer.calls == 1, description="first poll")
        assert status_of(service) is ProcessStatus.RUNNING

        consumer.outcomes.put_nowait(Boom())
        await wait_until(
            lambda: status_of(service) is ProcessStatus.ERRORED, description="ERRORED"
        )
        assert service.consecutive_failures == 1

        consumer.outcomes.put_nowait(None)
        await wait_until(
            lambda: status_of(service) is ProcessStatus.RUNNING, description="RUNNING"
        )
        assert service.consecutive_failures == 0

        service.request_drain()
        consumer.outcomes.put_nowait(None)
        await asyncio.wait_for(task, timeout=2)

    assert status_of(service) is ProcessStatus.STOPPED


async def test_consumer_service_retry_waits_the_backoff_then_consumes_again() -> None:
    backoff = Backoff(
        initial=timedelta(milliseconds=20), maximum=timedelta(milliseconds=20)
    )
    consumer = ScriptedConsumer(Boom(), None)
    service = ConsumerService(
        "retried",
        consumer,
        fast_settings(error_handler=RetryErrorHandler(), retry_backoff=backoff),
    )

    async with running(service) as task:
        await wait_until(lambda: consumer.completed == 1, description="the retry")
        assert status_of(service) is ProcessStatus.RUNNING
        assert service.consecutive_failures == 0
        service.request_drain()
        consumer.outcomes.put_nowait(None)
        await asyncio.wait_for(task, timeout=2)

    assert consumer.calls >= 2
    # Loose lower bound only: the retry did wait instead of retrying at once.
    assert consumer.call_times[1] - consumer.call_times[0] >= 0.01


async def test_consumer_service_drain_interrupts_the_retry_backoff() -> None:
    consumer = ScriptedConsumer(Boom())
    service = ConsumerService(
        "backing-off",
        consumer,
        fast_settings(
            error_handler=RetryErrorHandler(),
            retry_backoff=Backoff(
                initial=timedelta(hours=1), maximum=timedelta(hours=1)
            ),
        ),
    )

    async with running(service) as task:
        await wait_until(
            lambda: status_of(service) is ProcessStatus.ERRORED, description="a failure"
        )
        service.request_drain()
        await asyncio.wait_for(task, timeout=2)

    assert consumer.calls == 1
    assert status_of(service) is ProcessStatus.STOPPED


async def test_consumer_service_raise_handler_ends_execute_with_the_error() -> None:
    error = Boom("fatal")
    consumer = ScriptedConsumer(error)
    service = ConsumerService(
        "fatal", consumer, fast_settings(error_handler=RaiseErrorHandler())
    )

    with pytest.raises(Boom) as raised:
        await asyncio.wait_for(service.execute(), timeout=2)

    assert raised.value is error
    assert status_of(service) is ProcessStatus.ERRORED
    assert consumer.calls == 1


async def test_consumer_service_cancelled_is_stopped() -> None:
    consumer = ScriptedConsumer()
    service = ConsumerService("cancelled", consumer, fast_settings())
    task = asyncio.create_task(service.execute())
    await wait_until(lambda: consumer.calls == 1, description="a consume_all")

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert status_of(service) is ProcessStatus.STOPPED


async def test_consumer_service_logs_failures_and_recovery() -> None:
    consumer = ScriptedConsumer(Boom("bad event"), None)
    service = ConsumerService("orders/1", consumer, fast_settings())

    with structlog.testing.capture_logs() as logs:
        async with running(service) as task:
            await wait_until(lambda: consumer.completed == 1, description="recovery")
            service.request_drain()
            consumer.outcomes.put_nowait(None)
            await asyncio.wait_for(task, timeout=2)

    failures = [log for log in logs if log["event"] == "consumer.failed"]
    assert len(failures) == 1
    assert failures[0]["service"] == "orders/1"
    assert failures[0]["log_level"] == "error"
    assert failures[0]["consecutive_failures"] == 1
    assert isinstance(failures[0]["exc_info"], Boom)
    assert any(
        log["event"] == "consumer.recovered" and log["service"] == "orders/1"
        for log in logs
    )


async def _idle() -> None:
    return None


async def test_a_name_taken_in_a_shared_service_manager_is_avoided(
    mocker: MockerFixture,
) -> None:
    broker = mocker.create_autospec(EventBroker, instance=True)
    manager = ServiceManager()
    manager.register(CallableService(_idle), name="orders-projection/subscriber-1")
    runtime = EventRuntime("node-1", broker, manager)

    name = await runtime.register_subscription_consumer(subscription_consumer())

    assert name == "orders-projection/subscriber-1#2"
    broker.register.assert_awaited_once()
    assert manager.service(name) is not None
