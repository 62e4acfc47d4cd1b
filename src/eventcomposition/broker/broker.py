import asyncio
import time
from datetime import timedelta

import structlog
from logicblocks.event.processing import (
    CallableService,
    ErrorHandler,
    ErrorHandlingService,
    ProcessStatus,
    RetryErrorHandler,
    determine_multi_process_status,
)
from logicblocks.event.processing.broker import (
    DistributedEventBroker as LogicblocksDistributedEventBroker,
)
from logicblocks.event.processing.broker import EventSubscriber
from logicblocks.event.processing.broker.strategies.distributed import (
    EventSubscriberManager,
    EventSubscriptionCoordinator,
    EventSubscriptionObserver,
)
from logicblocks.event.types import Event

from ..retry import Backoff
from .errors import BrokerRoleError
from .role import BrokerRole

logger = structlog.get_logger("eventcomposition.broker")


class DistributedEventBroker[E: Event](LogicblocksDistributedEventBroker[E]):
    """A distributed broker made of logicblocks' parts, running those its role needs.

    Every role starts, maintains and stops the subscriber manager (so a node's
    subscribers are registered, heartbeated and removed on a clean stop). Only
    ``COORDINATOR`` and ``FULL`` nodes coordinate; only ``OBSERVER`` and ``FULL`` nodes
    observe.

    When a part fails, the error handler decides (retry by default, as in
    logicblocks). The first restart after a healthy run is immediate, as in
    logicblocks; each further consecutive failure waits ``restart_backoff`` (with
    jitter) first, so an unreachable database causes no tight restart loop. A run
    that lasted longer than the backoff's maximum counts as healthy.

    It is a logicblocks ``DistributedEventBroker`` for code that checks, built
    through that class's constructor; it runs its parts itself, through ``execute``.
    """

    def __init__(
        self,
        event_subscriber_manager: EventSubscriberManager[E],
        event_subscription_coordinator: EventSubscriptionCoordinator,
        event_subscription_observer: EventSubscriptionObserver[E],
        role: BrokerRole = BrokerRole.FULL,
        error_handler: ErrorHandler[None] | None = None,
        *,
        restart_backoff: Backoff | None = None,
    ) -> None:
        handler = error_handler or RetryErrorHandler()
        super().__init__(
            event_subscriber_manager=event_subscriber_manager,
            event_subscription_coordinator=event_subscription_coordinator,
            event_subscription_observer=event_subscription_observer,
            error_handler=handler,
        )
        self._subscriber_manager = event_subscriber_manager
        self._coordinator = event_subscription_coordinator
        self._observer = event_subscription_observer
        self._role = BrokerRole(role)
        self._error_handler = handler
        self._restart_backoff = restart_backoff or Backoff()
        self._restarts = ErrorHandlingService[None](
            CallableService(self._run), error_handler=handler
        )
        self._has_run = False
        self._consecutive_failures = 0
        self._restart_delay = timedelta(0)

    @property
    def role(self) -> BrokerRole:
        return self._role

    @property
    def subscriber_manager(self) -> EventSubscriberManager[E]:
        return self._subscriber_manager

    @property
    def coordinator(self) -> EventSubscriptionCoordinator:
        return self._coordinator

    @property
    def observer(self) -> EventSubscriptionObserver[E]:
        return self._observer

    @property
    def error_handler(self) -> ErrorHandler[None]:
        return self._error_handler

    @property
    def restart_backoff(self) -> Backoff:
        return self._restart_backoff

    @property
    def status(self) -> ProcessStatus:
        match self._role:
            case BrokerRole.COORDINATOR:
                return self._coordinator.status
            case BrokerRole.OBSERVER:
                return self._observer.status
            case BrokerRole.FULL:
                return determine_multi_process_status(
                    self._coordinator.status, self._observer.status
                )

    async def register(self, subscriber: EventSubscriber[E]) -> None:
        if not self._role.observes:
            raise BrokerRoleError(
                self._role,
                f"register subscriber '{subscriber.group}/{subscriber.id}'",
            )
        await self._subscriber_manager.add(subscriber)

    async def execute(self) -> None:
        self._has_run = False
        await self._restarts.execute()

    async def _run(self) -> None:
        restarting, self._has_run = self._has_run, True
        if restarting:
            # Wait before anything that could fail, so nothing can skip the wait.
            await asyncio.sleep(self._restart_delay.total_seconds())
        started = time.monotonic()
        try:
            if restarting:
                # A failing log write fails this run like any error: it is
                # backed off, never retried in a tight loop.
                await logger.awarning(
                    "broker.restarting",
                    role=str(self._role),
                    delay_seconds=self._restart_delay.total_seconds(),
                    consecutive_failures=self._consecutive_failures,
                )
            await self._run_parts()
        except Exception as error:
            self._record_failure(time.monotonic() - started, error)
            raise

    async def _run_parts(self) -> None:
        try:
            await self._subscriber_manager.start()
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._subscriber_manager.maintain())
                if self._role.coordinates:
                    tasks.create_task(self._coordinator.coordinate())
                if self._role.observes:
                    tasks.create_task(self._observer.observe())
        finally:
            await self._stop_subscriber_manager()

    async def _stop_subscriber_manager(self) -> None:
        try:
            await self._subscriber_manager.stop()
        except Exception as error:
            task = asyncio.current_task()
            if task is None or not task.cancelling():
                raise
            # Stopping because we were cancelled: a failure to unregister must not
            # replace the cancellation, or the error handler would restart the
            # broker instead of letting it stop. The coordinator drops these
            # subscribers once their heartbeats age out.
            await logger.aerror(
                "broker.unregister-failed", role=str(self._role), error=repr(error)
            )

    def _record_failure(self, ran_for_seconds: float, error: Exception) -> None:
        # A run that stayed up longer than the longest backoff was healthy: the
        # failure after it starts a new series, whose first restart is immediate.
        if ran_for_seconds > self._restart_backoff.maximum.total_seconds():
            self._consecutive_failures = 0
        self._consecutive_failures += 1
        self._restart_delay = self._restart_backoff.delay(
            self._consecutive_failures - 1
        )
        logger.error(
            "broker.failed",
            role=str(self._role),
            consecutive_failures=self._consecutive_failures,
            # Used only if the error handler decides to restart.
            restart_delay_seconds=self._restart_delay.total_seconds(),
            error=repr(error),
        )
