import asyncio
from collections.abc import Collection, Mapping, Sequence
from enum import StrEnum
from types import TracebackType
from typing import Any, Protocol, Self, runtime_checkable

import structlog
from logicblocks.event.processing import (
    DeferredFuture,
    EventBroker,
    EventConsumer,
    EventSubscriber,
    EventSubscriptionConsumer,
    ExecutionMode,
    IsolationMode,
    ProcessStatus,
    ServiceManager,
    determine_multi_process_status,
)
from logicblocks.event.processing.broker import EventSubscriberHealth
from logicblocks.event.sources import EventSource
from logicblocks.event.types import (
    EventSourceIdentifier,
    StoredEvent,
)

from ..broker import BrokerRole
from ..lag import SavesPositions
from ..metrics import NodeMetrics
from .consumer_service import ConsumerService
from .errors import RuntimeLifecycleError
from .registrations import (
    ConsumerRegistration,
    Registration,
    SubscriberRegistration,
    SubscriptionConsumerRegistration,
)
from .settings import EventConsumerSettings

logger = structlog.get_logger("eventcomposition.runtime")

BROKER_SERVICE_NAME = "event-broker"


@runtime_checkable
class UsesMetrics(Protocol):
    """A consumer that records into the node's metrics once given them."""

    def use_metrics(self, metrics: NodeMetrics) -> None: ...


@runtime_checkable
class ExposesSources(Protocol):
    """A consumer that tells which event sources it holds, so that only a change in
    one of them wakes it (see ``EventRuntime.wake_consumers``)."""

    @property
    def sources(self) -> Sequence[EventSourceIdentifier]: ...


@runtime_checkable
class KeepsCheckpointGroups(Protocol):
    """A consumer whose checkpoints are kept under other group names than its
    subscriber group (a versioned projection: ``group@v2`` while rebuilding and
    after the swap), so that lag is read where its checkpoints are."""

    @property
    def checkpoint_groups(self) -> Sequence[str]: ...


@runtime_checkable
class ReportsRebuild(Protocol):
    """A consumer that may be rebuilding a projection (``rebuild_status`` is None
    when it is not)."""

    def rebuild_status(self) -> Mapping[str, object] | None: ...


class _WakingSubscriber(EventSubscriber[StoredEvent]):
    """What the broker holds for a subscription consumer: the consumer itself, except
    that accepting a source also wakes the consumer's service, so that a source
    handed over is read at once rather than at the next poll (which, with
    notifications on, comes only every ``notify_poll_interval``)."""

    def __init__(self, consumer: EventSubscriptionConsumer[StoredEvent]) -> None:
        self.consumer = consumer
        self.service: ConsumerService | None = None

    @property
    def group(self) -> str:
        return self.consumer.group

    @property
    def id(self) -> str:
        return self.consumer.id

    @property
    def subscription_requests(self) -> Sequence[EventSourceIdentifier]:
        return self.consumer.subscription_requests

    def health(self) -> EventSubscriberHealth:
        return self.consumer.health()

    async def accept(
        self, source: EventSource[EventSourceIdentifier, StoredEvent]
    ) -> None:
        await self.consumer.accept(source)
        if self.service is not None:
            self.service.wake()

    async def withdraw(
        self, source: EventSource[EventSourceIdentifier, StoredEvent]
    ) -> None:
        await self.consumer.withdraw(source)


class _Phase(StrEnum):
    NEW = "new"
    STARTED = "started"
    STOPPING = "stopping"
    STOPPED = "stopped"


class EventRuntime:
    """One node's event processing: a broker, a service manager and consumers.

    Register subscribers and consumers, then ``start()``; ``stop()`` drains the
    consumers (each finishes its ``consume_all`` in progress, within its
    ``stop_timeout``), then stops the broker, whose subscribers leave the cluster so
    that other nodes take their sources over at once. A runtime runs once:
    logicblocks' ``ServiceManager`` cannot start twice.

    ``metrics``, when given, are the node's: each consumer that records metrics
    (``UsesMetrics``) and was built without its own is handed them at
    registration, so every kind of consumer reports into the node's registry.
    """

    def __init__(
        self,
        node_id: str,
        event_broker: EventBroker[StoredEvent],
        service_manager: ServiceManager,
        default_consumer_settings: EventConsumerSettings | None = None,
        *,
        role: BrokerRole = BrokerRole.FULL,
        metrics: NodeMetrics | None = None,
    ) -> None:
        self._node_id = node_id
        self._metrics = metrics
        self._role = BrokerRole(role)
        self._event_broker = event_broker
        self._service_manager = service_manager
        self._default_consumer_settings = (
            default_consumer_settings or EventConsumerSettings()
        )
        self._consumer_services: dict[str, ConsumerService] = {}
        self._phase = _Phase.NEW
        self._stop_lock = asyncio.Lock()
        self._logger = logger.bind(node_id=node_id)

    @property
    def node_id(self) -> str:
        return self._node_id

    @property
    def role(self) -> BrokerRole:
        """The node's role in its cluster, as given by whoever built the runtime."""
        return self._role

    @property
    def event_broker(self) -> EventBroker[StoredEvent]:
        return self._event_broker

    @property
    def service_manager(self) -> ServiceManager:
        return self._service_manager

    @property
    def default_consumer_settings(self) -> EventConsumerSettings:
        return self._default_consumer_settings

    @property
    def started(self) -> bool:
        return self._phase is not _Phase.NEW

    @property
    def stopped(self) -> bool:
        return self._phase is _Phase.STOPPED

    async def register_subscriber(
        self, subscriber: EventSubscriber[StoredEvent]
    ) -> None:
        """Register a subscriber with the broker for work allocation only."""
        self._ensure_registrable(f"subscriber '{subscriber.group}/{subscriber.id}'")
        await self._event_broker.register(subscriber)
        self._logger.info(
            "runtime.subscriber-registered",
            subscriber_group=subscriber.group,
            subscriber_id=subscriber.id,
        )

    async def register_consumer(
        self,
        consumer: EventConsumer,
        settings: EventConsumerSettings | None = None,
        *,
        name: str | None = None,
    ) -> str:
        """Poll ``consumer.consume_all`` with error handling, as a background service.

        The consumer is not registered with the broker. Returns the service's unique
        name, as used in ``service_statuses`` and the logs.
        """
        service_name = self._unique_name(name or _consumer_name(consumer))
        self._ensure_registrable(f"consumer '{service_name}'")
        self._add_consumer_service(service_name, consumer, settings)
        return service_name

    async def register_subscription_consumer(
        self,
        subscription_consumer: EventSubscriptionConsumer[StoredEvent],
        settings: EventConsumerSettings | None = None,
    ) -> str:
        """Register with the broker for allocation and poll it for consumption.

        When the broker refuses the subscriber (a coordinator-only broker does), the
        error propagates and nothing is registered.
        """
        key = f"{subscription_consumer.group}/{subscription_consumer.id}"
        service_name = self._unique_name(key)
        self._ensure_registrable(f"subscription consumer '{key}'")
        # Everything that can fail is checked before the broker accepts the
        # subscriber: a broker cannot forget one, and a subscriber nothing polls
        # would hold sources that no node processes.
        subscriber = _WakingSubscriber(subscription_consumer)
        await self.register_subscriber(subscriber)
        service = self._add_consumer_service(
            service_name, subscription_consumer, settings
        )
        subscriber.service = service
        return service_name

    def _add_consumer_service(
        self,
        service_name: str,
        consumer: EventConsumer,
        settings: EventConsumerSettings | None,
    ) -> ConsumerService:
        resolved = settings or self._default_consumer_settings
        if self._metrics is not None and isinstance(consumer, UsesMetrics):
            consumer.use_metrics(self._metrics)
        service = ConsumerService(service_name, consumer, resolved)
        self._service_manager.register(
            service,
            name=service_name,
            execution_mode=ExecutionMode.BACKGROUND,
            isolation_mode=resolved.isolation_mode,
        )
        self._consumer_services[service_name] = service
        self._logger.info(
            "runtime.consumer-registered",
            service=service_name,
            poll_interval_seconds=resolved.poll_interval.total_seconds(),
            isolation_mode=resolved.isolation_mode.name.lower(),
        )
        return service

    async def register(self, registration: Registration) -> str | None:
        """Register one declaration; returns the consumer's service name, if any."""
        match registration:
            case SubscriptionConsumerRegistration(consumer=consumer, settings=settings):
                return await self.register_subscription_consumer(consumer, settings)
            case ConsumerRegistration(consumer=consumer, settings=settings, name=name):
                return await self.register_consumer(consumer, settings, name=name)
            case SubscriberRegistration(subscriber=subscriber):
                await self.register_subscriber(subscriber)
                return None

    async def register_all(self, registrations: Sequence[Registration]) -> list[str]:
        """Register every declaration; returns the consumers' service names.

        A coordinator-only node processes nothing: its declarations are skipped
        (with one log line), so one application declaration serves every role.
        """
        if not self._role.observes:
            if registrations:
                self._logger.info(
                    "runtime.consumers-not-registered",
                    role=str(self._role),
                    declared=len(registrations),
                    reason="a coordinator-only node processes nothing",
                )
            return []
        names = [await self.register(registration) for registration in registrations]
        return [name for name in names if name is not None]

    async def start(self) -> None:
        """Start the broker and every registered consumer."""
        match self._phase:
            case _Phase.STARTED | _Phase.STOPPING:
                raise RuntimeLifecycleError(
                    f"runtime of node '{self._node_id}' has already started"
                )
            case _Phase.STOPPED:
                raise RuntimeLifecycleError(
                    f"runtime of node '{self._node_id}' has been stopped and cannot "
                    "start again (logicblocks' ServiceManager runs only once): build "
                    "a new runtime"
                )
        self._service_manager.register(
            self._event_broker,
            name=BROKER_SERVICE_NAME,
            execution_mode=ExecutionMode.BACKGROUND,
            isolation_mode=IsolationMode.MAIN_THREAD,
        )
        self._phase = _Phase.STARTED
        await self._service_manager.start()
        self._logger.info(
            "runtime.started",
            role=str(self._role),
            consumers=list(self._consumer_services),
        )

    async def stop(self) -> None:
        """Drain the consumers, then stop the broker. Safe to call more than once."""
        async with self._stop_lock:
            if self._phase is _Phase.STOPPED:
                return
            if self._phase is _Phase.NEW:
                self._phase = _Phase.STOPPED
                return
            self._phase = _Phase.STOPPING
            self._logger.info("runtime.stopping")
            await self._drain_consumers()
            await self._service_manager.stop()
            self._phase = _Phase.STOPPED
            self._logger.info("runtime.stopped")

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    def held_sources(self) -> list[tuple[str, EventSourceIdentifier]]:
        """(subscriber group, source) of every source the consumers hold now.

        Only subscription consumers that expose their sources (``ExposesSources``)
        count; a source may appear under several groups.
        """
        return [
            (group, source)
            for service in self._consumer_services.values()
            if isinstance(consumer := service.consumer, EventSubscriber)
            and isinstance(consumer, ExposesSources)
            for group in _checkpoint_groups(consumer)
            for source in consumer.sources
        ]

    def subscriber_groups(self) -> list[str]:
        """The subscriber groups of this node's subscription consumers, each once
        (a versioned projection's as its live version's checkpoint group)."""
        return list(
            dict.fromkeys(
                group
                for service in self._consumer_services.values()
                if isinstance(consumer := service.consumer, EventSubscriber)
                for group in _checkpoint_groups(consumer)
            )
        )

    def position_savers(self) -> list[SavesPositions]:
        """The consumers that keep their sources' positions themselves (per-event
        subscription consumers), for reading their lag."""
        return [
            consumer
            for service in self._consumer_services.values()
            if isinstance(consumer := service.consumer, SavesPositions)
        ]

    def rebuilds(self) -> list[Mapping[str, object]]:
        """The rebuilds this node's consumers take part in, as they last saw them."""
        found = []
        for service in self._consumer_services.values():
            consumer = service.consumer
            if isinstance(consumer, ReportsRebuild):
                status = consumer.rebuild_status()
                if status is not None:
                    found.append(status)
        return found

    def wake_consumers(self, categories: Collection[str] | None = None) -> int:
        """Make consumers poll now: those holding a source in one of ``categories``,
        or all of them when ``categories`` is None. Consumers that do not expose
        their sources (``ExposesSources``) are always woken. A consumer that can
        poll only some categories (``ConsumesCategories``) polls just those.
        Returns how many were woken. Callable from any thread; see
        ``ConsumerService.wake``."""
        woken = 0
        for service in self._consumer_services.values():
            if categories is None or _holds_any(service.consumer, categories):
                service.wake(categories)
                woken += 1
        return woken

    @property
    def service_statuses(self) -> Mapping[str, ProcessStatus]:
        """Each service's status by name: the broker and every consumer.

        Once the runtime has started, a service whose task has not run yet reads
        ``starting``, not ``initialised``: it has been started.
        """
        statuses = {
            name: service.status for name, service in self._consumer_services.items()
        }
        broker_state = self._service_manager.service(BROKER_SERVICE_NAME)
        if broker_state is not None:
            statuses[BROKER_SERVICE_NAME] = self._broker_status(broker_state.future)
        if self._phase is not _Phase.NEW:
            statuses = {
                name: ProcessStatus.STARTING
                if status is ProcessStatus.INITIALISED
                else status
                for name, status in statuses.items()
            }
        return statuses

    @property
    def status(self) -> ProcessStatus:
        """The node's status: every service's status combined."""
        match self._phase:
            case _Phase.NEW:
                return ProcessStatus.INITIALISED
            case _Phase.STOPPED:
                return ProcessStatus.STOPPED
            case _Phase.STOPPING:
                return ProcessStatus.STOPPING
        combined = determine_multi_process_status(*self.service_statuses.values())
        # Started: never "initialised", even with no service reporting yet.
        if combined is ProcessStatus.INITIALISED:
            return ProcessStatus.STARTING
        return combined

    @property
    def broker_failed(self) -> bool:
        """Whether the broker's service ended while the runtime runs: for good.

        Its error handler gave up (a retrying broker restarts instead, and only
        reports ``ERRORED`` until it does); only a new process can rejoin the
        cluster.
        """
        state = self._service_manager.service(BROKER_SERVICE_NAME)
        return (
            state is not None and state.future.done() and self._phase is _Phase.STARTED
        )

    def _broker_status(self, future: DeferredFuture[Any]) -> ProcessStatus:
        if future.done():
            # A broker whose service ended while the runtime runs has failed for good
            # (its error handler gave up); its parts may still claim to be running.
            return ProcessStatus.STOPPED if self.stopped else ProcessStatus.ERRORED
        return self._event_broker.status

    async def _drain_consumers(self) -> None:
        for service in self._consumer_services.values():
            service.request_drain()
        await asyncio.gather(
            *(self._wait_drained(name) for name in self._consumer_services)
        )

    async def _wait_drained(self, name: str) -> None:
        state = self._service_manager.service(name)
        if state is None:
            return
        timeout = self._consumer_services[name].settings.stop_timeout.total_seconds()
        # On timeout, cancelling the waiter cancels the service too: the consumer
        # stops before the broker does, and its unsaved progress is replayed by the
        # next owner of its sources (delivery is at least once).
        waiter = asyncio.ensure_future(_settled(state.future))
        done, _ = await asyncio.wait({waiter}, timeout=timeout)
        if not done:
            waiter.cancel()
            self._logger.warning(
                "runtime.consumer-drain-timed-out",
                service=name,
                stop_timeout_seconds=timeout,
            )

    def _ensure_registrable(self, what: str) -> None:
        if self._phase is not _Phase.NEW:
            raise RuntimeLifecycleError(
                f"cannot register {what}: the runtime of node '{self._node_id}' has "
                f"already {'started' if self._phase is _Phase.STARTED else 'stopped'}; "
                "register every subscriber and consumer before start()"
            )

    def _unique_name(self, base: str) -> str:
        taken = {
            *self._consumer_services,
            *self._service_manager.services,
            BROKER_SERVICE_NAME,
        }
        if base not in taken:
            return base
        suffix = 2
        while f"{base}#{suffix}" in taken:
            suffix += 1
        return f"{base}#{suffix}"


async def _settled(future: Any) -> None:
    # Waits for a service to end however it ends: its failure is already logged.
    try:
        await future
    except BaseException:
        return


def _holds_any(consumer: EventConsumer, categories: Collection[str]) -> bool:
    if not isinstance(consumer, ExposesSources):
        return True
    for source in consumer.sources:
        # Categories, their streams and their partitions all name their category.
        category = getattr(source, "category", None)
        if not isinstance(category, str):  # the whole log, or a source we do not know
            return True
        if category in categories:
            return True
    return False


def _checkpoint_groups(consumer: EventSubscriber[Any]) -> Sequence[str]:
    if isinstance(consumer, KeepsCheckpointGroups):
        return consumer.checkpoint_groups
    return [consumer.group]


def _consumer_name(consumer: EventConsumer) -> str:
    name = getattr(consumer, "name", None)
    return name if isinstance(name, str) and name else type(consumer).__name__
