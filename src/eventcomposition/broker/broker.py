import asyncio
import time

import structlog
from logicblocks.event.processing import (
    ErrorHandler,
    ProcessStatus,
    RetryErrorHandler,
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
    """logicblocks' distributed broker, running only the parts its role needs.

    Every role starts, maintains and stops the subscriber manager (so a node's
    subscribers are registered, heartbeated and removed on a clean stop). Only
    ``COORDINATOR`` and ``FULL`` nodes coordinate; only ``OBSERVER`` and ``FULL`` nodes
    observe.

    When a part fails, the error handler decides (retry by default, as in
    logicblocks); unlike logicblocks, a retry waits ``restart_backoff`` first, growing
    with each consecutive failure, so an unreachable database does not cause a tight
    restart loop.
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
        super().__init__(
            event_subscriber_manager=event_subscriber_manager,
            event_subscription_coordinator=event_subscription_coordinator,
            event_subscription_observer=event_subscription_observer,
            error_handler=error_handler or RetryErrorHandler(),
        )
        self._role = BrokerRole(role)
        self._restart_backoff = restart_backoff or Backoff()
        self._consecutive_failures = 0

    @property
    def role(self) -> BrokerRole:
        return self._role

    @property
    def status(self) -> ProcessStatus:
        match self._role:
            case BrokerRole.COORDINATOR:
                return self._event_subscription_coordinator.status
            case BrokerRole.OBSERVER:
                return self._event_subscription_observer.status
            case BrokerRole.FULL:
                return super().status

    async def register(self, subscriber: EventSubscriber[E]) -> None:
        if not self._role.observes:
            raise BrokerRoleError(
                self._role,
                f"register subscriber '{subscriber.group}/{subscriber.id}'",
            )
        await super().register(subscriber)

    async def _do_execute(self) -> None:
        await self._wait_before_restart()
        started = time.monotonic()
        try:
            await self._run_parts()
        except Exception as error:
            self._record_failure(time.monotonic() - started, error)
            raise

    async def _run_parts(self) -> None:
        subscriber_manager = self._event_subscriber_manager
        try:
            await subscriber_manager.start()
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(subscriber_manager.maintain())
                if self._role.coordinates:
                    tasks.create_task(self._event_subscription_coordinator.coordinate())
                if self._role.observes:
                    tasks.create_task(self._event_subscription_observer.observe())
        finally:
            await self._stop_subscriber_manager()

    async def _stop_subscriber_manager(self) -> None:
        try:
            await self._event_subscriber_manager.stop()
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

    async def _wait_before_restart(self) -> None:
        delay = self._restart_backoff.delay(self._consecutive_failures)
        if delay:
            await logger.awarning(
                "broker.restarting",
                role=str(self._role),
                delay_seconds=delay.total_seconds(),
                consecutive_failures=self._consecutive_failures,
            )
            await asyncio.sleep(delay.total_seconds())

    def _record_failure(self, ran_for_seconds: float, error: Exception) -> None:
        # A run that stayed up longer than the longest backoff was healthy: the
        # failure after it starts a new series instead of extending the old one.
        if ran_for_seconds > self._restart_backoff.maximum.total_seconds():
            self._consecutive_failures = 0
        self._consecutive_failures += 1
        logger.error(
            "broker.failed",
            role=str(self._role),
            consecutive_failures=self._consecutive_failures,
            error=repr(error),
        )
