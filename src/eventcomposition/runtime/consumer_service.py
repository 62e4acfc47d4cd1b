"""The service that drives one consumer: error handling inside polling.

logicblocks' ``PollingService`` can only be cancelled, which interrupts
``consume_all`` halfway through a batch and loses the state it has not saved yet. This
service polls the same way but can also be asked to drain: it finishes the
``consume_all`` in progress (which saves the consumer's state) and then returns.
It also tracks a status and logs failures, which logicblocks' background services do
not, and can be woken (``wake``) to poll at once instead of at the end of its pause.
A consumer whose sources progress on their own (``PollsIndependently``) is waited
for only until its next poll is due or a wake comes: a blocked source then delays
no other source's poll.
"""

import asyncio
from asyncio import FIRST_COMPLETED
from collections.abc import Collection
from datetime import timedelta
from typing import Any, Protocol, runtime_checkable

import structlog
from logicblocks.event.processing import (
    CallableService,
    ErrorHandler,
    ErrorHandlerDecision,
    ErrorHandlingService,
    EventConsumer,
    ProcessStatus,
    RetryErrorHandlerDecision,
    Service,
)

from .settings import EventConsumerSettings

logger = structlog.get_logger("eventcomposition.runtime")

_WAKE_PATIENCE = 0.1
"""How long a poll of a ``PollsIndependently`` consumer is waited for before a
wake that came meanwhile is served by the next poll."""


@runtime_checkable
class ReleasesClaims(Protocol):
    """A consumer holding claims on sources (a transactional consumer), to be
    released once it has drained, so other nodes take its sources over at once."""

    async def release_claims(self) -> None: ...


@runtime_checkable
class ConsumesCategories(Protocol):
    """A consumer that can consume only its sources in some categories.

    Optional. Woken for categories (a notification names the categories an insert
    wrote), a consumer with it polls just those sources, and the rest wait for the
    next full poll (``consume_all``: the first one, each one at the end of a pause,
    a retry, a wake for every category). A consumer without it always polls
    everything.
    """

    async def consume_categories(self, categories: frozenset[str]) -> None: ...


@runtime_checkable
class PollsSoon(Protocol):
    """A consumer that may need its next poll sooner than the usual pause.

    Optional. A transactional consumer whose sources have committed events waiting
    behind the visibility horizon (an earlier sequence number still in flight)
    gets no notification when they become readable, so it asks to poll again soon.
    """

    def next_poll_within(self) -> timedelta | None: ...


@runtime_checkable
class PollsIndependently(Protocol):
    """A consumer whose sources progress on their own (a transactional consumer).

    Optional. ``poll`` sets going the sources' work (all sources, or those in
    ``categories``) and returns once it has ended or ``stop_waiting`` is set; the
    work still going then goes on, and a later poll reports how it ended. The
    service sets ``stop_waiting`` when the next poll is due, a wake comes or a
    drain is asked for, so that a blocked source never holds the others' polls
    up. A consumer without it is polled with ``consume_all``.
    """

    async def poll(
        self, categories: frozenset[str] | None, stop_waiting: asyncio.Event
    ) -> None: ...


class _ObservedErrorHandler(ErrorHandler[Any]):
    """Lets the consumer's own handler decide, after recording the failure."""

    def __init__(self, service: "ConsumerService", inner: ErrorHandler[Any]) -> None:
        self._service = service
        self._inner = inner

    def handle(self, exception: BaseException) -> ErrorHandlerDecision[Any]:
        decision = self._inner.handle(exception)
        if isinstance(exception, Exception):
            self._service.record_failure(exception, decision)
        return decision


class ConsumerService(Service[None]):
    """Polls ``consumer.consume_all`` with error handling until asked to drain."""

    def __init__(
        self, name: str, consumer: EventConsumer, settings: EventConsumerSettings
    ) -> None:
        self.name = name
        self.consumer = consumer
        self.settings = settings
        self.error_handling = ErrorHandlingService[Any](
            service=CallableService(self._consume_once),
            error_handler=_ObservedErrorHandler(self, settings.error_handler),
        )
        self._status = ProcessStatus.INITIALISED
        self._consecutive_failures = 0
        self._retrying = False
        self._drain_requested = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain: asyncio.Event | None = None
        self._poll_now: asyncio.Event | None = None
        # What wakes since the last poll asked for: categories, or everything.
        self._woken_for: set[str] = set()
        self._woken_for_all = False
        self._targeted: frozenset[str] | None = None
        # Set to end the wait of a poll in progress (PollsIndependently).
        self._stop_waiting: asyncio.Event | None = None
        self._poll_started = 0.0
        self._wake_cut_scheduled = False
        self._overdue = False

    @property
    def status(self) -> ProcessStatus:
        return self._status

    @property
    def consecutive_failures(self) -> int:
        return self._consecutive_failures

    async def execute(self) -> None:
        # The service may run on another thread's loop: remember it, so that
        # request_drain and wake can reach the loop safely from anywhere.
        self._loop = asyncio.get_running_loop()
        self._drain = asyncio.Event()
        self._poll_now = asyncio.Event()
        if self._drain_requested:
            self._drain.set()
        self._status = ProcessStatus.RUNNING
        targeted: frozenset[str] | None = None  # the first poll: everything
        try:
            while not self._drain_requested:
                # Wakes that came before this poll are served by it; one that comes
                # while it runs ends the next pause at once.
                self._poll_now.clear()
                self._targeted = targeted
                self._overdue = False
                await self.error_handling.execute()
                # A poll that waited until the next was due is followed at once.
                pause = 0.0 if self._overdue else self._pause_seconds()
                await self._pause(pause, self._poll_now)
                targeted = self._take_wake_scope(woken=self._poll_now.is_set())
            if isinstance(self.consumer, ReleasesClaims):
                await self.consumer.release_claims()
        except asyncio.CancelledError:
            self._status = ProcessStatus.STOPPED
            raise
        except BaseException:
            self._status = ProcessStatus.ERRORED
            raise
        self._status = ProcessStatus.STOPPED

    def _pause_seconds(self) -> float:
        pause = self.settings.poll_interval
        if isinstance(self.consumer, PollsSoon) and not self._retrying:
            sooner = self.consumer.next_poll_within()
            if sooner is not None:
                pause = min(pause, sooner)
        return pause.total_seconds()

    def request_drain(self) -> None:
        """Stop after the ``consume_all`` in progress; callable from any thread."""
        self._drain_requested = True
        if self._status is ProcessStatus.RUNNING:
            self._status = ProcessStatus.STOPPING
        self._set_threadsafe(self._drain)
        self._set_threadsafe(self._stop_waiting)

    def wake(self, categories: Collection[str] | None = None) -> None:
        """Poll now rather than at the end of the pause; callable from any thread.

        Wakes coalesce: any number of them during a pause make one poll, and any
        number during a poll make exactly one more poll follow it. That poll covers
        the union of the wakes' ``categories`` when the consumer can poll only some
        (``ConsumesCategories``), and everything when one of them named no
        categories. A retry backoff is not cut short. Before the service runs
        there is nothing to wake: its first poll comes at once anyway.
        """
        loop = self._loop
        if loop is not None and not loop.is_closed():
            scope = None if categories is None else frozenset(categories)
            loop.call_soon_threadsafe(self._woken, scope)

    def _woken(self, categories: frozenset[str] | None) -> None:
        if categories is None:
            self._woken_for_all = True
        else:
            self._woken_for |= categories
        if self._poll_now is not None:
            self._poll_now.set()
        self._stop_waiting_soon()

    def _stop_waiting_soon(self) -> None:
        """Let a wake end the wait of the poll in progress, once that poll has
        waited ``_WAKE_PATIENCE``: a poll that ends sooner serves the wakes that
        came meanwhile with one poll after it (as it always did), while one kept
        waiting by a slow or blocked source lets them through."""
        stop_waiting, loop = self._stop_waiting, self._loop
        if stop_waiting is None or loop is None or self._wake_cut_scheduled:
            return
        self._wake_cut_scheduled = True
        waited = loop.time() - self._poll_started
        loop.call_later(max(0.0, _WAKE_PATIENCE - waited), stop_waiting.set)

    def _take_wake_scope(self, *, woken: bool) -> frozenset[str] | None:
        """What the next poll covers: the categories woken for, or everything
        (``None``) after a pause that ran out or a wake for every category."""
        categories, everything = frozenset(self._woken_for), self._woken_for_all
        self._woken_for, self._woken_for_all = set(), False
        if not woken or everything or not categories:
            return None
        return categories

    def _set_threadsafe(self, event: asyncio.Event | None) -> None:
        loop = self._loop
        if loop is not None and event is not None and not loop.is_closed():
            loop.call_soon_threadsafe(event.set)

    def record_failure(
        self, error: Exception, decision: ErrorHandlerDecision[Any]
    ) -> None:
        self._consecutive_failures += 1
        self._retrying = isinstance(decision, RetryErrorHandlerDecision)
        self._status = ProcessStatus.ERRORED
        logger.error(
            "consumer.failed",
            service=self.name,
            consecutive_failures=self._consecutive_failures,
            decision=type(decision).__name__.removesuffix("ErrorHandlerDecision"),
            exc_info=error,
        )

    async def _consume_once(self) -> None:
        if self._retrying:
            delay = self.settings.retry_backoff.delay(self._consecutive_failures)
            self._retrying = False
            await self._pause(delay.total_seconds())
            if self._drain_requested:
                return
        targeted, self._targeted = self._targeted, None
        if isinstance(self.consumer, PollsIndependently):
            await self._poll_independently(self.consumer, targeted)
        elif targeted is not None and isinstance(self.consumer, ConsumesCategories):
            await self.consumer.consume_categories(targeted)
        else:
            await self.consumer.consume_all()
        if self._consecutive_failures:
            logger.info(
                "consumer.recovered",
                service=self.name,
                after_failures=self._consecutive_failures,
            )
        self._consecutive_failures = 0
        if not self._drain_requested:
            self._status = ProcessStatus.RUNNING

    async def _poll_independently(
        self, consumer: PollsIndependently, targeted: frozenset[str] | None
    ) -> None:
        """Poll, waiting for the sources' work no longer than until the next poll
        is due, a wake comes or a drain is asked for."""
        stop_waiting = asyncio.Event()
        if self._drain_requested:
            stop_waiting.set()
        self._stop_waiting = stop_waiting
        self._poll_started = asyncio.get_running_loop().time()
        self._wake_cut_scheduled = False

        def due() -> None:
            self._overdue = True
            stop_waiting.set()

        deadline = asyncio.get_running_loop().call_later(self._pause_seconds(), due)
        try:
            await consumer.poll(targeted, stop_waiting)
        finally:
            deadline.cancel()
            self._stop_waiting = None

    async def _pause(
        self, seconds: float, woken_by: asyncio.Event | None = None
    ) -> None:
        """Sleep ``seconds``, or less if drained or ``woken_by`` is set."""
        if self._drain is None or seconds <= 0:
            await asyncio.sleep(0)
            return
        waits = [asyncio.ensure_future(self._drain.wait())]
        if woken_by is not None:
            waits.append(asyncio.ensure_future(woken_by.wait()))
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"
