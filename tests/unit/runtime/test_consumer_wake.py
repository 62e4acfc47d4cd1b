"""Waking consumers: ConsumerService.wake and EventRuntime.wake_consumers.

Real event loop and ConsumerService, fake consumers; no database.
"""

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from typing import Any

from logicblocks.event.processing import (
    EventBroker,
    EventConsumer,
    RetryErrorHandler,
    ServiceManager,
)
from logicblocks.event.types import (
    CategoryIdentifier,
    EventSourceIdentifier,
    LogIdentifier,
    StreamIdentifier,
)
from pytest_mock import MockerFixture

from eventcomposition import Backoff, EventConsumerSettings, EventRuntime
from eventcomposition.consumers.partitions import CategoryPartition
from eventcomposition.runtime import ConsumerService, ConsumesCategories
from eventcomposition.testing.waiting import wait_until

LONG = timedelta(hours=1)


class GatedConsumer(EventConsumer):
    """Counts polls and the most that ran at once; a poll waits while ``gate`` is
    closed, so a test can hold one in progress."""

    def __init__(self, *, fail_first: bool = False) -> None:
        self.gate = asyncio.Event()
        self.gate.set()
        self.polls = 0
        self.running = 0
        self.most_at_once = 0
        self.fail_next = fail_first

    async def consume_all(self) -> None:
        self.polls += 1
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        try:
            await self.gate.wait()
            if self.fail_next:
                self.fail_next = False
                raise RuntimeError("first poll fails")
        finally:
            self.running -= 1


class SourcedConsumer(GatedConsumer):
    def __init__(self, *sources: EventSourceIdentifier) -> None:
        super().__init__()
        self._sources = sources

    @property
    def sources(self) -> Sequence[EventSourceIdentifier]:
        return self._sources


def polls_of(consumer: GatedConsumer) -> int:
    # A call, so that mypy does not narrow the count between two checks.
    return consumer.polls


@contextlib.asynccontextmanager
async def running(service: ConsumerService) -> AsyncIterator[None]:
    task = asyncio.create_task(service.execute())
    try:
        consumer = service.consumer
        assert isinstance(consumer, GatedConsumer)
        await wait_until(lambda: consumer.polls >= 1, description="the first poll")
        yield
    finally:
        service.request_drain()
        await asyncio.wait_for(task, timeout=2)


async def settle() -> None:
    """Let scheduled callbacks and a poll they start run."""
    for _ in range(5):
        await asyncio.sleep(0.01)


def idle_service(consumer: EventConsumer, **overrides: Any) -> ConsumerService:
    return ConsumerService(
        "woken", consumer, EventConsumerSettings(poll_interval=LONG, **overrides)
    )


async def test_a_wake_ends_the_pause_at_once() -> None:
    consumer = GatedConsumer()
    service = idle_service(consumer)
    async with running(service):
        await settle()
        assert polls_of(consumer) == 1

        service.wake()

        await wait_until(lambda: consumer.polls == 2, timeout=1, description="poll")


async def test_a_burst_of_wakes_during_a_pause_makes_one_poll() -> None:
    consumer = GatedConsumer()
    service = idle_service(consumer)
    async with running(service):
        await settle()

        for _ in range(100):
            service.wake()
        await settle()

        assert polls_of(consumer) == 2


async def test_wakes_during_a_poll_make_exactly_one_more_poll_never_two_at_once() -> (
    None
):
    consumer = GatedConsumer()
    service = idle_service(consumer)
    async with running(service):
        await settle()
        consumer.gate.clear()
        service.wake()
        await wait_until(lambda: consumer.running == 1, description="poll held")

        for _ in range(50):
            service.wake()
        await settle()
        assert polls_of(consumer) == 2, "a second poll started during the first"
        consumer.gate.set()
        await settle()

        assert polls_of(consumer) == 3
        assert consumer.most_at_once == 1


async def test_a_wake_from_another_thread_polls() -> None:
    consumer = GatedConsumer()
    service = idle_service(consumer)
    async with running(service):
        await settle()

        thread = threading.Thread(target=service.wake)
        thread.start()
        thread.join()

        await wait_until(lambda: consumer.polls == 2, timeout=1, description="poll")


async def test_a_wake_does_not_cut_the_retry_backoff_short() -> None:
    consumer = GatedConsumer(fail_first=True)
    service = idle_service(
        consumer,
        error_handler=RetryErrorHandler(),
        retry_backoff=Backoff(initial=LONG, maximum=LONG),
    )
    async with running(service):
        await wait_until(lambda: service.consecutive_failures == 1)

        service.wake()
        await settle()

        assert polls_of(consumer) == 1


async def test_a_wake_before_the_service_runs_is_ignored() -> None:
    consumer = GatedConsumer()
    service = idle_service(consumer)

    service.wake()

    async with running(service):
        await settle()
        assert polls_of(consumer) == 1


# --- waking for categories (ConsumesCategories) ----------------------------------


class CategoryConsumer(GatedConsumer):
    """Also polls only some categories: records each such poll's categories."""

    def __init__(self) -> None:
        super().__init__()
        self.targeted: list[frozenset[str]] = []

    async def consume_categories(self, categories: frozenset[str]) -> None:
        self.targeted.append(categories)
        await self.gate.wait()


def targeted_of(consumer: CategoryConsumer) -> list[frozenset[str]]:
    return list(consumer.targeted)


def test_the_category_consumer_is_one_that_consumes_categories() -> None:
    assert isinstance(CategoryConsumer(), ConsumesCategories)
    assert not isinstance(GatedConsumer(), ConsumesCategories)


async def test_a_wake_for_categories_polls_only_those() -> None:
    consumer = CategoryConsumer()
    service = idle_service(consumer)
    async with running(service):
        await settle()

        service.wake({"orders"})
        await settle()

        assert targeted_of(consumer) == [frozenset({"orders"})]
        assert polls_of(consumer) == 1, "the first poll only: consume_all"


async def test_wakes_for_categories_during_a_pause_make_one_poll_of_them_all() -> None:
    consumer = CategoryConsumer()
    service = idle_service(consumer)
    async with running(service):
        await settle()

        service.wake({"orders"})
        service.wake(["payments", "orders"])
        await settle()

        assert targeted_of(consumer) == [frozenset({"orders", "payments"})]


async def test_a_wake_for_every_category_among_them_polls_everything() -> None:
    consumer = CategoryConsumer()
    service = idle_service(consumer)
    async with running(service):
        await settle()

        service.wake({"orders"})
        service.wake()
        await settle()

        assert (polls_of(consumer), targeted_of(consumer)) == (2, [])


async def test_the_poll_at_the_end_of_a_pause_polls_everything() -> None:
    consumer = CategoryConsumer()
    service = ConsumerService(
        "woken",
        consumer,
        EventConsumerSettings(poll_interval=timedelta(milliseconds=20)),
    )
    async with running(service):
        await wait_until(lambda: consumer.polls >= 3, timeout=1, description="polls")

        assert targeted_of(consumer) == []


async def test_a_consumer_without_categories_polls_everything_when_woken_for_some() -> (
    None
):
    consumer = GatedConsumer()
    service = idle_service(consumer)
    async with running(service):
        await settle()

        service.wake({"orders"})

        await wait_until(lambda: consumer.polls == 2, timeout=1, description="poll")


# --- EventRuntime.wake_consumers ---------------------------------------------------


async def test_wake_consumers_wakes_the_holders_of_the_categories(
    mocker: MockerFixture,
) -> None:
    registered: list[ConsumerService] = []
    service_manager = mocker.create_autospec(ServiceManager, instance=True)
    service_manager.register.side_effect = lambda service, **_: registered.append(
        service
    )
    runtime = EventRuntime(
        "node-1",
        mocker.create_autospec(EventBroker, instance=True),
        service_manager,
        EventConsumerSettings(poll_interval=LONG),
    )
    consumers = {
        "orders": SourcedConsumer(CategoryIdentifier(category="orders")),
        "a-stream": SourcedConsumer(StreamIdentifier(category="payments", stream="1")),
        "a-partition": SourcedConsumer(CategoryPartition("invoices", 1, 4)),
        "the-log": SourcedConsumer(LogIdentifier()),
        "nothing-held": SourcedConsumer(),
        "opaque": GatedConsumer(),
    }
    for name, consumer in consumers.items():
        await runtime.register_consumer(consumer, name=name)

    def polled() -> set[str]:
        return {name for name, c in consumers.items() if c.polls > 1}

    async with contextlib.AsyncExitStack() as stack:
        for service in registered:
            await stack.enter_async_context(running(service))
        await settle()

        assert runtime.wake_consumers({"payments", "unheld"}) == 3
        await settle()
        assert polled() == {"a-stream", "the-log", "opaque"}

        assert runtime.wake_consumers({"unheld"}) == 2
        assert runtime.wake_consumers() == 6
        await settle()
        assert {name: c.polls for name, c in consumers.items()} == {
            "orders": 2,
            "a-stream": 3,
            "a-partition": 2,
            "the-log": 3,
            "nothing-held": 2,
            "opaque": 3,
        }
        # A category's notification wakes the holders of its partitions.
        assert runtime.wake_consumers({"invoices"}) == 3
        await settle()
        assert consumers["a-partition"].polls == 3


async def test_wake_consumers_passes_the_categories_on(mocker: MockerFixture) -> None:
    registered: list[ConsumerService] = []
    service_manager = mocker.create_autospec(ServiceManager, instance=True)
    service_manager.register.side_effect = lambda service, **_: registered.append(
        service
    )
    runtime = EventRuntime(
        "node-1",
        mocker.create_autospec(EventBroker, instance=True),
        service_manager,
        EventConsumerSettings(poll_interval=LONG),
    )
    consumer = CategoryConsumer()
    await runtime.register_consumer(consumer, name="categories")
    async with running(registered[0]):
        await settle()

        assert runtime.wake_consumers({"payments"}) == 1
        await settle()

        assert targeted_of(consumer) == [frozenset({"payments"})]
