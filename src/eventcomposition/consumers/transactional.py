"""Transactional batch consumers: exactly once in effect.

Every poll, for each source allocated to it by the broker, the consumer claims the
source (once), reads up to ``batch_size`` events after its checkpoint, hands them to
the processor (a ``BatchProcessor``, or an ``EventHandler`` run over each event) and
moves the checkpoint in the same transaction, fenced by the claim; it goes on while
a full batch came back. A batch holds events of one source only, in sequence-number
order.

When a batch fails, the consumer finds the failing event (an ``EventHandler`` names
it; otherwise the batch is halved until it is found), committing the events before
it. The event is tried again on the next polls; after ``poison_attempts`` failures
it is parked as a dead letter or its source stops, as ``on_poison`` says. With
``poison_order="stream"`` (the default) the later events of a parked event's stream
are parked behind it, as they come, while the other streams of the source go on;
``dead-letters retry`` applies a stream's parked events in order. Database outages
are transient: the source backs off and tries again, and nothing is parked for them.

Each source progresses on its own: a poll sets going a run (a task) for each of
its sources with events waiting, which takes batch after batch while a backlog
lasts, at most ``concurrent_batches`` batches of the consumer at once (a batch
running longer than ``slow_batch`` stops counting, so that hung sources cannot
hold the bound). A source that blocks (a database cut off, a lock that is not
released) therefore delays only itself, for at most ``batch_timeout``: its batch is
then abandoned (its transaction rolls back) and retried after a backoff. A poll
waits for its sources' runs unless told to stop waiting (``poll``'s
``stop_waiting``, which the consumer service sets when the next poll is due or a
wake comes); a run left going is reported by a later poll. Leases are renewed by
a task of their own while anything runs, so a blocked source never costs the
others their claims.
"""

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import structlog
from logicblocks.event.processing.consumers import EventSubscriptionConsumer
from logicblocks.event.sources import EventSource
from logicblocks.event.store import EventStore
from logicblocks.event.types import (
    CategoryIdentifier,
    EventSourceIdentifier,
    StoredEvent,
    StreamIdentifier,
)

from ..errors import EventCompositionError
from ..metrics import NodeMetrics
from ..retry import Backoff
from .batch import TRANSIENT_ERRORS, BatchProcessor, ClaimLostError, EventFailedError
from .claims import Claim, DeadLetter, Holder, stream_key
from .handlers import Processor, as_batch_processor
from .partitions import CategoryPartition, Floor
from .policies import PoisonOrder, PoisonPolicy
from .source_keys import source_key
from .stores import (
    CheckpointStore,
    EventReader,
    ParkedStreamsChangedError,
    check_readable,
)

logger = structlog.get_logger("eventcomposition.consumers")

__all__ = [
    "DEFAULT_BATCH_TIMEOUT",
    "DEFAULT_CATCH_UP_BATCH_SIZE",
    "DEFAULT_CONCURRENT_BATCHES",
    "TRANSIENT_ERRORS",
    "PoisonOrder",
    "PoisonPolicy",
    "SourcesStoppedError",
    "TransactionalConsumer",
    "make_transactional_consumer",
]

_HELD_BACK_FIRST = timedelta(milliseconds=2)
_HELD_BACK_LONGEST = timedelta(milliseconds=500)
DEFAULT_CONCURRENT_BATCHES = 2
DEFAULT_CATCH_UP_BATCH_SIZE = 2000
"""Events per batch of a source that is behind (its last batch came back full)."""
DEFAULT_BATCH_TIMEOUT = timedelta(seconds=30)
_DEFAULT_SLOW_BATCH = timedelta(seconds=1)


class SourcesStoppedError(EventCompositionError):
    """Sources stopped at an event their processor kept failing (``on_poison="stop"``)."""

    def __init__(self, group: str, stopped: Mapping[str, str]) -> None:
        self.stopped = dict(stopped)
        described = "; ".join(f"{key}: {why}" for key, why in self.stopped.items())
        super().__init__(
            f"{len(self.stopped)} source(s) of subscriber group '{group}' stopped: "
            f"{described}; fix the processor (or the data) and restart the node, "
            "or use on_poison = 'park' to set such events aside"
        )


@dataclass
class _Source:
    identifier: EventSourceIdentifier
    key: str
    claim: Claim | None = None
    position: int | None = None
    position_loaded: bool = False
    renewed_at: float = 0.0
    withdrawn: bool = False
    busy: bool = False
    run: "asyncio.Task[None] | None" = field(default=None, repr=False)
    """The task taking this source's batches, while it has any to take."""
    again: bool = False
    """A poll came while the run was busy: read once more after this batch."""
    stopped: str | None = None
    failing: tuple[int, int] | None = None
    """The sequence number of the event that failed last, and how often it did."""
    parked: set[str] = field(default_factory=set)
    """Streams with dead letters (``poison_order="stream"``): read with the
    checkpoint; their later events are parked behind them."""
    transient_failures: int = 0
    retry_at: float = 0.0
    floors: tuple[Floor, ...] = ()
    """A partition's floors after a repartition: events applied before it."""
    read_ahead: "_ReadAhead | None" = field(default=None, repr=False)
    """The read of the next batch, begun while this one is applied."""
    limit: int = 0
    """Events to read in the next batch: the catch-up batch size after a full
    batch, else (0) the batch size."""
    log: Any = field(default=None, repr=False)


@dataclass(frozen=True)
class _ReadAhead:
    """The read of a source's events after ``after``, running or done.

    A read returns the events after ``after`` up to the visibility horizon, all
    final: whenever it ran, its events are those a read from ``after`` would
    return now (or a prefix of them, the horizon having moved on). It is used
    only when the checkpoint is ``after``, so it neither skips nor repeats."""

    after: int
    task: "asyncio.Task[Sequence[StoredEvent]]"

    def drop(self) -> None:
        self.task.cancel()


def _retrieve(task: "asyncio.Task[Sequence[StoredEvent]]") -> None:
    # A read ahead nobody awaits must not log "exception was never retrieved".
    if not task.cancelled():
        task.exception()


def _category_of(source: EventSourceIdentifier) -> str | None:
    match source:
        case (
            CategoryIdentifier(category=category)
            | StreamIdentifier(category=category)
            | CategoryPartition(category=category)
        ):
            return category
    return None


def _nothing_after(head: int | None, position: int | None) -> bool:
    """Whether a source whose greatest sequence number is ``head`` has nothing
    after the checkpoint ``position`` (a source read up to its head, or empty)."""
    if head is None:
        return True
    return position is not None and head <= position


def _no_delegates(source: EventSource[EventSourceIdentifier, Any]) -> Any:
    raise AssertionError("a TransactionalConsumer keeps no delegate consumers")


def _index_of(events: Sequence[StoredEvent], event: StoredEvent) -> int | None:
    for index, candidate in enumerate(events):
        if candidate.sequence_number == event.sequence_number:
            return index
    return None


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


class TransactionalConsumer(EventSubscriptionConsumer[StoredEvent]):
    """A subscription consumer whose batches commit with their checkpoints.

    Register it like any subscription consumer
    (``EventRuntime.register_subscription_consumer``): it is a logicblocks
    ``EventSubscriptionConsumer`` whose ``accept``, ``withdraw`` and ``consume_all``
    are its own.

    A source stopped by a poison event (``on_poison="stop"``) keeps its claim, so no
    other node takes it over, and makes every later ``consume_all`` raise
    ``SourcesStoppedError`` once the other sources have had their turn: the runtime
    then shows the consumer, and the node, errored. Restarting the node (or
    withdrawing the source) tries the event again.
    """

    def __init__(
        self,
        *,
        group: str,
        id: str,
        node_id: str,
        subscription_requests: Sequence[EventSourceIdentifier],
        processor: Processor,
        checkpoint_store: CheckpointStore,
        event_reader: EventReader,
        batch_size: int = 500,
        catch_up_batch_size: int | None = None,
        claim_lease: timedelta = timedelta(seconds=10),
        on_poison: PoisonPolicy | str = PoisonPolicy.PARK,
        poison_attempts: int = 3,
        poison_order: PoisonOrder | str = PoisonOrder.STREAM,
        transient_backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
        metrics: NodeMetrics | None = None,
        concurrent_sources: bool = False,
        batch_timeout: timedelta | None = DEFAULT_BATCH_TIMEOUT,
        read_ahead: bool = False,
        concurrent_batches: int | None = DEFAULT_CONCURRENT_BATCHES,
        slow_batch: timedelta = _DEFAULT_SLOW_BATCH,
    ) -> None:
        super().__init__(
            group=group,
            id=id,
            subscription_requests=list(subscription_requests),
            delegate_factory=_no_delegates,
        )
        self._holder = Holder(node_id=node_id, subscriber_id=id)
        self._processor = as_batch_processor(processor)
        self._store = checkpoint_store
        self._reader = event_reader
        self._batch_size = batch_size
        self._catch_up_batch_size = max(batch_size, catch_up_batch_size or 0)
        self._lease = claim_lease
        self._on_poison = PoisonPolicy(on_poison)
        self._poison_attempts = poison_attempts
        self._poison_order = PoisonOrder(poison_order)
        self._in_stream_order = self._poison_order is PoisonOrder.STREAM
        self._backoff = transient_backoff or Backoff(
            initial=timedelta(milliseconds=100), maximum=timedelta(seconds=10)
        )
        self._clock = clock
        self._metrics = metrics or NodeMetrics()
        # Concurrent sources overlap one another already, each on a connection.
        self._read_ahead = read_ahead and not concurrent_sources
        self._batch_timeout = (
            None if batch_timeout is None else batch_timeout.total_seconds()
        )
        # concurrent_sources: every source at once, unbounded.
        bound = None if concurrent_sources else concurrent_batches
        self._permits = None if bound is None else asyncio.Semaphore(bound)
        self._slow_batch = slow_batch.total_seconds()
        self._renewing = asyncio.Lock()
        self._renewer: asyncio.Task[None] | None = None
        self._polls = 0
        self._failures: list[Exception] = []
        self._sources: dict[EventSourceIdentifier, _Source] = {}
        self._held_back_polls = 0
        self._held_back: set[EventSourceIdentifier] = set()
        self._committed_this_round = False
        self._restarts_seen = checkpoint_store.server_restarts
        self._log = logger.bind(subscriber=f"{group}/{id}", node_id=node_id)

    def use_metrics(self, metrics: NodeMetrics) -> None:
        """Record into ``metrics`` from now on, unless given metrics when built.

        The runtime calls this at registration with its node's metrics.
        """
        if type(self._metrics) is NodeMetrics:
            self._metrics = metrics

    # -- what others may read ----------------------------------------------------

    @property
    def holder(self) -> Holder:
        return self._holder

    @property
    def processor(self) -> BatchProcessor:
        """What applies the batches (an ``EventHandler`` comes wrapped in one)."""
        return self._processor

    @property
    def poison_order(self) -> PoisonOrder:
        """Whether the later events of a parked event's stream wait behind it."""
        return self._poison_order

    @property
    def read_ahead(self) -> bool:
        """Whether a source's next batch is read while its current one is applied
        (off with ``concurrent_sources``)."""
        return self._read_ahead

    @property
    def checkpoint_store(self) -> CheckpointStore:
        return self._store

    @property
    def event_reader(self) -> EventReader:
        return self._reader

    @property
    def sources(self) -> tuple[EventSourceIdentifier, ...]:
        """The sources allocated to this subscriber now (claimed or waiting to be)."""
        return tuple(
            state.identifier for state in self._sources.values() if not state.withdrawn
        )

    @property
    def claimed_sources(self) -> tuple[EventSourceIdentifier, ...]:
        return tuple(
            state.identifier
            for state in self._sources.values()
            if state.claim is not None
        )

    @property
    def stopped_sources(self) -> Mapping[str, str]:
        """Sources stopped by a poison event, with why, by key."""
        return {
            state.key: state.stopped
            for state in self._sources.values()
            if state.stopped is not None
        }

    # health() stays HEALTHY with a stopped source: an unhealthy subscriber stops
    # heartbeating, so the coordinator would move all its sources, healthy ones too.
    # A stopped source shows in consume_all's error, hence the consumer's status.

    # -- allocation ----------------------------------------------------------------

    async def accept(self, source: EventSource[EventSourceIdentifier, Any]) -> None:
        identifier = source.identifier
        check_readable(identifier)
        state = self._sources.get(identifier)
        if state is not None:
            state.withdrawn = False
            return
        key = source_key(identifier)
        self._sources[identifier] = _Source(
            identifier=identifier, key=key, log=self._log.bind(source=key)
        )
        await self._log.ainfo("consumer.source-accepted", source=key)

    async def withdraw(self, source: EventSource[EventSourceIdentifier, Any]) -> None:
        state = self._sources.get(source.identifier)
        if state is None:
            return
        state.withdrawn = True
        if not state.busy:
            await self._let_go(state)

    async def release_claims(self) -> None:
        """Release every claim, e.g. once the node has stopped consuming, so that
        other nodes take the sources over at once instead of after the lease.

        A source's batch in progress is finished (and saved) first, then its claim
        released; cancelled, this abandons those batches (rolled back)."""
        for state in list(self._sources.values()):
            state.withdrawn = True
            if not state.busy:
                await self._let_go(state)
        runs = self._runs(self._sources.values())
        try:
            if runs:
                await asyncio.wait(runs)
        except asyncio.CancelledError:
            self._abandon_runs()
            raise
        await self._stop_renewals()

    async def _let_go(self, state: _Source) -> None:
        if self._sources.get(state.identifier) is state and state.withdrawn:
            del self._sources[state.identifier]
        ahead, state.read_ahead = state.read_ahead, None
        if ahead is not None:
            ahead.drop()
        claim, state.claim = state.claim, None
        if claim is None:
            return
        try:
            await self._store.release(claim)
        except TRANSIENT_ERRORS as error:
            await state.log.awarning(
                "consumer.release-failed",
                error=_describe(error),
                lease_seconds=self._lease.total_seconds(),
            )
            return
        await state.log.adebug("consumer.source-released", epoch=claim.epoch)

    # -- consumption ----------------------------------------------------------------

    async def consume_all(self) -> None:
        """Consume every source until none has events waiting (one batch after
        another while a backlog lasts, the sources side by side)."""
        await self.poll(None)

    async def consume_categories(self, categories: frozenset[str]) -> None:
        """``consume_all`` for the sources in ``categories`` only (what a
        notification names), and those with events waiting behind the visibility
        horizon; the others wait for the next full poll."""
        await self.poll(categories)

    async def poll(
        self,
        categories: frozenset[str] | None,
        stop_waiting: asyncio.Event | None = None,
    ) -> None:
        """Set going the runs of the sources with events waiting (all sources, or
        those in ``categories`` and those held back) and wait for them to end.

        With ``stop_waiting``, wait only for the runs this poll set going, and only
        until it is set: the runs still going then go on on their own (a source
        already running reads once more after its batch), and a later poll reports
        how they ended. Without it, wait for every run of the sources polled.

        Raises the database failures of the runs that ended since the last poll
        (each source backs off on its own), and ``SourcesStoppedError`` while a
        source is stopped by a poison event.
        """
        states = [
            state
            for state in self._sources.values()
            if categories is None
            or _category_of(state.identifier) in categories
            or state.identifier in self._held_back
        ]
        self._polls += 1
        self._keep_renewing()
        try:
            started = await self._start_runs(states)
            if stop_waiting is None:
                await self._wait_for(self._runs(states))
            else:
                await self._wait_for(started, stop_waiting)
        except asyncio.CancelledError:
            # Stopped hard (not drained): no batch goes on behind the caller's back.
            self._abandon_runs()
            raise
        finally:
            self._polls -= 1
        if not self._failures:
            await self._check_held_back([s for s in states if s.run is None])
        self._raise_failures()

    async def _start_runs(self, states: list[_Source]) -> set["asyncio.Task[None]"]:
        await self._renew_due_claims()
        self._notice_restart()
        self._committed_this_round = False
        running = [state for state in states if state.run is not None]
        for state in running:
            state.again = True  # its next read comes after this poll's horizon
        pending = await self._with_new_events(
            [state for state in states if state.run is None]
        )
        pending = [state for state in pending if self._may_read(state)]
        if pending or running:
            # One horizon for the poll, only when something may be read: an idle
            # poll (every head at its checkpoint) costs no sample, nor does one
            # whose sources all back off after a database failure.
            try:
                async with asyncio.timeout(self._batch_timeout):
                    await self._reader.refresh()
            except TRANSIENT_ERRORS as error:
                self._failures.append(error)  # type: ignore[arg-type]
        return {self._start_run(state) for state in pending}

    def _start_run(self, state: _Source) -> "asyncio.Task[None]":
        run = asyncio.create_task(
            self._run(state), name=f"{self.group}/{self.id} {state.key}"
        )
        state.run = run

        def ended(task: "asyncio.Task[None]") -> None:
            # Also for a run cancelled before it started (no finally ran).
            if state.run is task:
                state.run = None

        run.add_done_callback(ended)
        return run

    @staticmethod
    async def _wait_for(
        runs: set["asyncio.Task[None]"], stop_waiting: asyncio.Event | None = None
    ) -> None:
        """Until ``runs`` have ended, or ``stop_waiting`` is set."""
        if not runs:
            return
        if stop_waiting is None:
            await asyncio.wait(runs)
            return
        stopped = asyncio.ensure_future(stop_waiting.wait())
        going: set[asyncio.Future[Any]] = set(runs)
        try:
            while going and not stopped.done():
                done, _ = await asyncio.wait(
                    {*going, stopped}, return_when=asyncio.FIRST_COMPLETED
                )
                going -= done
        finally:
            stopped.cancel()

    @staticmethod
    def _runs(states: Iterable[_Source]) -> set["asyncio.Task[None]"]:
        return {state.run for state in states if state.run is not None}

    def _abandon_runs(self) -> None:
        for state in self._sources.values():
            if state.run is not None:
                state.run.cancel()
        renewer, self._renewer = self._renewer, None
        if renewer is not None:
            renewer.cancel()

    def _raise_failures(self) -> None:
        if self.stopped_sources:
            self._failures.clear()
            raise SourcesStoppedError(self.group, self.stopped_sources)
        failures, self._failures = self._failures, []
        for failure in failures:
            if not isinstance(failure, TRANSIENT_ERRORS):
                raise failure  # not the database's: the first, as it came
        transient = failures
        if len(transient) == 1:
            raise transient[0]
        if transient:
            raise ExceptionGroup(
                f"{len(transient)} sources of {self.group}/{self.id} could not "
                "reach the database",
                transient,
            )

    async def _run(self, state: _Source) -> None:
        """Take ``state``'s batches while it has a backlog (or a poll came
        meanwhile), one at a time: the source's own progress."""
        try:
            while True:
                state.again = False
                more = await self._take_turn(state, self._failures)
                if not (more or state.again) or not self._may_read(state):
                    return
        except Exception as error:  # reported by the poll, like the others
            self._failures.append(error)

    # -- lease renewals ---------------------------------------------------------------

    def _keep_renewing(self) -> None:
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.create_task(
                self._renew_while_active(), name=f"{self.group}/{self.id} renewals"
            )

    def _active(self) -> bool:
        """Whether a poll or a source's run is going on (between polls, each poll
        renews what is due as it starts)."""
        return self._polls > 0 or any(
            state.run is not None for state in self._sources.values()
        )

    async def _renew_while_active(self) -> None:
        """Renew the claims that fall due while a poll or any source's run goes
        on, whatever the sources are waiting for."""
        while self._active():
            await asyncio.sleep(self._until_a_renewal_is_due())
            if self._active():  # between polls, each poll renews as it starts
                await self._renew_due_claims()

    def _until_a_renewal_is_due(self) -> float:
        due_after = self._lease.total_seconds() / 3
        renewed = [
            state.renewed_at
            for state in self._sources.values()
            if state.claim is not None and not state.busy
        ]
        if not renewed:
            return due_after
        return max(0.01, min(renewed) + due_after - self._clock())

    async def _stop_renewals(self) -> None:
        renewer, self._renewer = self._renewer, None
        if renewer is not None and renewer is not asyncio.current_task():
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer

    def _may_read(self, state: _Source) -> bool:
        return (
            not state.withdrawn
            and state.stopped is None
            and state.retry_at <= self._clock()
        )

    def next_poll_within(self) -> timedelta | None:
        """How soon to poll again, when events wait behind the visibility horizon
        (no notification will come for them); None when the usual pause will do.
        Doubles from 2 ms to 500 ms while they keep waiting and nothing is applied
        (a writer holds the horizon back for long); back to 2 ms once a round
        applies events again."""
        if not self._held_back_polls:
            return None
        doublings = min(self._held_back_polls - 1, 8)
        doubled: timedelta = _HELD_BACK_FIRST * 2**doublings
        return min(doubled, _HELD_BACK_LONGEST)

    async def _check_held_back(self, states: list[_Source]) -> None:
        positions = {
            state.identifier: state.position
            for state in states
            if state.claim is not None
            and state.position_loaded
            and state.stopped is None
            and not state.withdrawn
        }
        try:
            waiting = set(await self._reader.held_back(positions))
        except TRANSIENT_ERRORS:
            waiting = set()  # the sources' own reads report and back off
        # A round of some categories only (a wake) leaves the others' state as is.
        polled = {state.identifier for state in states}
        self._held_back = (self._held_back - polled) | waiting
        if not self._held_back:
            self._held_back_polls = 0
        elif self._committed_this_round:
            self._held_back_polls = 1
        else:
            self._held_back_polls += 1

    async def _with_new_events(self, states: list[_Source]) -> list[_Source]:
        """``states`` less the sources known to have nothing after their checkpoint,
        found with one query for all of them: an idle poll costs one query."""
        known = [
            state
            for state in states
            if state.claim is not None
            and state.position_loaded
            and state.stopped is None
            and not state.withdrawn
        ]
        if len(known) < 2:
            return states
        try:
            async with asyncio.timeout(self._batch_timeout):
                heads = await self._reader.heads([state.identifier for state in known])
        except TRANSIENT_ERRORS:
            return states  # each source's own read reports and backs off
        if heads is None:
            return states
        idle = {
            id(state)
            for state in known
            if _nothing_after(heads.get(state.identifier), state.position)
        }
        return [state for state in states if id(state) not in idle]

    async def _take_turn(self, state: _Source, transient: list[Exception]) -> bool:
        """Consume one batch of ``state``'s source; True when more may be waiting."""
        if state.withdrawn or state.stopped is not None:
            return False
        if state.retry_at > self._clock():
            return False
        async with self._permit():
            if state.withdrawn:
                await self._let_go(state)
                return False
            return await self._batch_of(state, transient)

    @contextlib.asynccontextmanager
    async def _permit(self) -> AsyncIterator[None]:
        """One of the ``concurrent_batches`` places, given back when the batch ends
        or once it has run ``slow_batch``: a hung batch (it ends after
        ``batch_timeout``) does not keep the other sources waiting."""
        permits = self._permits
        if permits is None:
            yield
            return
        await permits.acquire()
        given_back = False

        def give_back() -> None:
            nonlocal given_back
            if not given_back:
                given_back = True
                permits.release()

        slow = asyncio.get_running_loop().call_later(self._slow_batch, give_back)
        try:
            yield
        finally:
            slow.cancel()
            give_back()

    async def _batch_of(self, state: _Source, transient: list[Exception]) -> bool:
        state.busy = True
        try:
            async with asyncio.timeout(self._batch_timeout):
                more = await self._consume_batch(state)
            state.transient_failures = 0
        except TRANSIENT_ERRORS as error:
            transient.append(error)  # type: ignore[arg-type]
            await self._transient_failure(state, error)
            more = False
        finally:
            state.busy = False
        if state.withdrawn:
            await self._let_go(state)
            return False
        return more

    async def _transient_failure(self, state: _Source, error: BaseException) -> None:
        state.transient_failures += 1
        self._metrics.consumer_failed(self.group, state.identifier)
        delay = self._backoff.delay(state.transient_failures).total_seconds()
        state.retry_at = self._clock() + delay
        # A commit cut off may have gone through: read the checkpoint again.
        state.position_loaded = False
        await state.log.awarning(
            "consumer.source-transient-failure",
            error=_describe(error),
            consecutive_failures=state.transient_failures,
            retry_in_seconds=delay,
        )

    def _notice_restart(self) -> None:
        """When the store saw its server start again, forget what every source
        holds in memory: each reads its checkpoint again before its next batch.

        A server that acknowledges commits before they are durable can lose the
        last of them in a crash (a batch's rows with its checkpoint, published
        events), and hand the lost events' sequence numbers out again to new
        events. A source idle through the crash saw no error: its remembered
        checkpoint (and the head it compares it with) would have it pass over
        the new events below it until the log grew past it, or for ever. Its
        read begun ahead is dropped too (it may hold lost events)."""
        restarts = self._store.server_restarts
        if restarts == self._restarts_seen:
            return
        self._restarts_seen = restarts
        self._log.warning("consumer.server-restarted", restarts=restarts)
        for state in self._sources.values():
            state.position_loaded = False
            ahead, state.read_ahead = state.read_ahead, None
            if ahead is not None:
                ahead.drop()

    async def _consume_batch(self, state: _Source) -> bool:
        self._notice_restart()
        if state.claim is None and not await self._claim(state):
            return False
        if not state.position_loaded:
            state.position = await self._store.position(self.group, state.key)
            if self._in_stream_order:
                state.parked = await self._store.parked_streams(self.group, state.key)
            state.position_loaded = True
        limit = state.limit or self._batch_size
        events = await self._read(state, limit)
        if not events:
            return False
        full = len(events) >= limit
        # Behind (a full batch): read more at a time until caught up.
        state.limit = self._catch_up_batch_size if full else 0
        if full and self._read_ahead:
            self._begin_read_ahead(state, events[-1].sequence_number)
        try:
            applied = await self._apply_unless_floored(state, events)
        except ClaimLostError as error:
            await state.log.awarning("consumer.claim-lost", reason=str(error))
            state.claim = None
            state.position_loaded = False
            return False
        finally:
            ahead = state.read_ahead
            if ahead is not None and ahead.after != state.position:
                state.read_ahead = None  # not applied up to its start
                ahead.drop()
        return applied and full

    async def _read(self, state: _Source, limit: int) -> Sequence[StoredEvent]:
        """The next batch of ``state``'s source: the read begun ahead when it
        starts at the checkpoint, else a read now."""
        ahead, state.read_ahead = state.read_ahead, None
        if ahead is not None:
            if ahead.after == state.position:
                return await ahead.task
            ahead.drop()
        return await self._reader.read(
            state.identifier, after=state.position, limit=limit
        )

    def _begin_read_ahead(self, state: _Source, after: int) -> None:
        """Read the batch after ``after`` (on a connection of its own) while this
        one is applied and committed: the database reads while Python applies."""
        task = asyncio.create_task(
            self._reader.read(
                state.identifier,
                after=after,
                limit=state.limit or self._batch_size,
            )
        )
        task.add_done_callback(_retrieve)
        state.read_ahead = _ReadAhead(after, task)

    async def _apply_unless_floored(
        self, state: _Source, events: Sequence[StoredEvent]
    ) -> bool:
        """``_apply`` the events a repartition's floors do not cover (those were
        applied before it, in a former partition)."""
        caught_up = state.position is not None and state.position >= max(
            (f.sequence_number for f in state.floors), default=0
        )
        if caught_up:
            state.floors = ()  # nothing more to skip
        if not state.floors:
            return await self._apply(state, events)
        kept = [
            e
            for e in events
            if not any(f.covers(e.stream, e.sequence_number) for f in state.floors)
        ]
        if kept:
            return await self._apply(state, kept)
        await self._skip_to(state, events[-1].sequence_number)
        return True

    async def _skip_to(self, state: _Source, sequence_number: int) -> None:
        claim = state.claim
        if claim is None:
            raise AssertionError("skipping without a claim")
        async with self._store.transaction() as transaction:
            await self._store.advance(transaction, claim, sequence_number, self._lease)
        state.position = sequence_number

    async def _prepared(self, state: _Source) -> bool:
        """Whether ``state``'s source may be claimed: a partition whose count is
        not yet its group's waits for the repartition (see
        ``CheckpointStore.prepare_partition``)."""
        if not isinstance(state.identifier, CategoryPartition):
            return True
        floors = await self._store.prepare_partition(self.group, state.identifier)
        if floors is None:
            await state.log.adebug("consumer.partition-waiting-for-repartition")
            return False
        state.floors = floors
        return True

    async def _claim(self, state: _Source) -> bool:
        if not await self._prepared(state):
            return False
        claim = await self._store.claim(
            self.group, state.key, self._holder, self._lease
        )
        if claim is None:
            return False
        state.claim = claim
        state.renewed_at = self._clock()
        state.position_loaded = False
        await state.log.adebug("consumer.source-claimed", epoch=claim.epoch)
        return True

    async def _renew_due_claims(self) -> None:
        if self._renewing.locked():
            return  # the renewal task is at it
        async with self._renewing:
            await self._renew_due_claims_now()

    async def _renew_due_claims_now(self) -> None:
        due_after = self._lease.total_seconds() / 3
        now = self._clock()
        due = [
            state
            for state in self._sources.values()
            if state.claim is not None
            and not state.busy
            and now - state.renewed_at >= due_after
        ]
        if not due:
            return
        claims = [state.claim for state in due if state.claim is not None]
        try:
            # Within a third of the lease: the next attempt still comes in time.
            async with asyncio.timeout(due_after):
                held = await self._store.renew(claims, self._lease)
        except TRANSIENT_ERRORS as error:
            await self._log.awarning("consumer.renew-failed", error=_describe(error))
            return
        for state in due:
            if state.claim is None or state.busy:
                continue  # let go meanwhile, or its batch renews it
            if state.claim in held:
                state.renewed_at = now
            else:
                await state.log.awarning("consumer.claim-lost", reason="lease renewal")
                state.claim = None
                state.position_loaded = False

    async def _apply(self, state: _Source, events: Sequence[StoredEvent]) -> bool:
        """Apply ``events``, finding the failing one on failure (named by the
        processor, or by halving); False when the source must wait."""
        if not events:
            return True
        if (
            len(events) > 1
            and state.failing is not None
            and state.failing[0] == events[0].sequence_number
        ):
            # The event that failed last time comes first: try it alone.
            return await self._apply(state, events[:1]) and await self._apply(
                state, events[1:]
            )
        try:
            await self._commit(state, events)
        except ClaimLostError:
            raise
        except TRANSIENT_ERRORS:
            raise
        except EventFailedError as error:
            index = _index_of(events, error.event)
            if index is None:
                return await self._halve(state, events, error)
            return (
                await self._apply(state, events[:index])
                and await self._poisoned(state, events[index], error.cause)
                and await self._apply(state, events[index + 1 :])
            )
        except Exception as error:
            return await self._halve(state, events, error)
        return True

    async def _halve(
        self, state: _Source, events: Sequence[StoredEvent], error: Exception
    ) -> bool:
        if len(events) > 1:
            half = len(events) // 2
            return await self._apply(state, events[:half]) and await self._apply(
                state, events[half:]
            )
        return await self._poisoned(state, events[0], error)

    async def _commit(self, state: _Source, events: Sequence[StoredEvent]) -> None:
        claim = state.claim
        if claim is None:
            raise AssertionError("committing without a claim")
        last = events[-1].sequence_number
        started = time.perf_counter()
        while True:
            applied, held = self._behind_parked(state, events)
            try:
                async with self._store.transaction() as transaction:
                    if held:
                        await self._store.hold(transaction, held)
                    if applied:
                        await self._processor.process_batch(applied, transaction)
                        await transaction.write_batch_states()
                    # Only from where the batch was read: a commit this consumer
                    # was told of but the server lost must not let it skip events.
                    await self._store.advance(
                        transaction, claim, last, self._lease, expected=state.position
                    )
            except ParkedStreamsChangedError as changed:
                # A retry applied those streams' dead letters: apply their events.
                await state.log.ainfo(
                    "consumer.streams-unparked", streams=list(changed.streams)
                )
                state.parked = await self._store.parked_streams(self.group, state.key)
                continue
            break
        self._metrics.batch_processed(
            self.group, state.identifier, len(applied), time.perf_counter() - started
        )
        if held:
            self._metrics.dead_lettered(self.group, len(held))
            await state.log.awarning(
                "consumer.events-held",
                events=len(held),
                streams=sorted({letter.stream for letter in held}),
            )
        state.position = last
        self._committed_this_round = True
        state.renewed_at = self._clock()
        if state.failing is not None and state.failing[0] <= last:
            state.failing = None

    def _behind_parked(
        self, state: _Source, events: Sequence[StoredEvent]
    ) -> tuple[Sequence[StoredEvent], list[DeadLetter]]:
        """``events`` split into those to apply and the dead letters of those
        that wait behind a parked event of their stream."""
        parked = state.parked
        if not parked:
            return events, []
        applied: list[StoredEvent] = []
        held: list[DeadLetter] = []
        now = datetime.now(UTC)
        for event in events:
            stream = stream_key(event)
            if stream in parked:
                held.append(
                    DeadLetter(
                        group=self.group,
                        source=state.key,
                        sequence_number=event.sequence_number,
                        event_id=event.id,
                        error="waiting behind an earlier dead letter of its stream",
                        attempts=0,
                        parked_at=now,
                        stream=stream,
                        waiting=True,
                    )
                )
            else:
                applied.append(event)
        return applied, held

    async def _poisoned(
        self, state: _Source, event: StoredEvent, error: Exception
    ) -> bool:
        sequence_number = event.sequence_number
        attempts = 1
        if state.failing is not None and state.failing[0] == sequence_number:
            attempts = state.failing[1] + 1
        state.failing = (sequence_number, attempts)
        self._metrics.consumer_failed(self.group, state.identifier)
        where = {
            "sequence_number": sequence_number,
            "event_id": event.id,
            "stream": event.stream,
            "position": event.position,
            "attempts": attempts,
            "error": _describe(error),
        }
        if attempts < self._poison_attempts:
            await state.log.awarning("consumer.event-failed", **where)
            return False
        if self._on_poison is PoisonPolicy.STOP:
            state.stopped = (
                f"event {event.id} (sequence number {sequence_number}) failed "
                f"{attempts} times: {_describe(error)}"
            )
            await state.log.aerror("consumer.source-stopped", **where)
            return False
        claim = state.claim
        if claim is None:
            raise AssertionError("parking without a claim")
        async with self._store.transaction() as transaction:
            await self._store.park(
                transaction,
                claim,
                DeadLetter(
                    group=self.group,
                    source=state.key,
                    sequence_number=sequence_number,
                    event_id=event.id,
                    error=_describe(error),
                    attempts=attempts,
                    parked_at=datetime.now(UTC),
                    stream=stream_key(event),
                ),
                self._lease,
            )
        state.position = sequence_number
        state.failing = None
        if self._in_stream_order:
            state.parked.add(stream_key(event))
        self._metrics.dead_lettered(self.group)
        await state.log.aerror("consumer.event-parked", **where)
        return True


def make_transactional_consumer(
    *,
    event_store: EventStore,
    checkpoint_store: CheckpointStore,
    subscriber_group: str,
    subscription_requests: Sequence[EventSourceIdentifier],
    processor: Processor,
    batch_size: int = 500,
    catch_up_batch_size: int | None = DEFAULT_CATCH_UP_BATCH_SIZE,
    subscriber_id: str | None = None,
    node_id: str | None = None,
    claim_lease: timedelta = timedelta(seconds=10),
    on_poison: PoisonPolicy | str = PoisonPolicy.PARK,
    poison_attempts: int = 3,
    poison_order: PoisonOrder | str = PoisonOrder.STREAM,
    event_reader: EventReader | None = None,
    metrics: NodeMetrics | None = None,
    concurrent_sources: bool = False,
    batch_timeout: timedelta | None = DEFAULT_BATCH_TIMEOUT,
    read_ahead: bool = False,
    concurrent_batches: int | None = DEFAULT_CONCURRENT_BATCHES,
    slow_batch: timedelta = _DEFAULT_SLOW_BATCH,
) -> TransactionalConsumer:
    """A subscriber for ``subscription_requests`` whose batches go to ``processor``.

    ``processor`` is a ``BatchProcessor`` (a batch at a time) or an
    ``EventHandler`` (an event at a time, run over each batch inside the batch's
    transaction: as fast, fenced and exactly once in effect).

    An event ``processor`` keeps failing is tried ``poison_attempts`` times, then
    parked as a dead letter (``on_poison="park"``) or its source stops
    (``"stop"``). ``poison_order="stream"`` parks the later events of a parked
    event's stream behind it, so that each stream keeps its order (the other
    streams go on); ``"none"`` applies them, and a retried dead letter then lands
    after them.

    Events are read with ``checkpoint_store.event_reader(event_store)`` unless an
    ``event_reader`` is given: on PostgreSQL one direct query on the ``events`` table
    of the store's database, in memory through ``event_store``. ``node_id`` names the
    claim holder with the subscriber's id (host and process id by default).
    ``metrics`` records each committed batch, each failed attempt (an event's or
    the database's) and each parked event.

    Each source progresses on its own, with at most ``concurrent_batches``
    batches of this consumer running at once (each on its own connection;
    ``None``: no bound), so ``processor`` may be called for different sources at
    the same time. A batch running longer than ``slow_batch`` stops counting
    against that bound (it still holds its connection), so that hung sources do
    not keep the others waiting; with ``concurrent_sources`` there is no bound. A batch (read, process, commit) still running
    after ``batch_timeout`` is abandoned and retried after a backoff (``None``: no
    limit): one blocked source delays only itself, for that long at most.
    A source whose batch came back full is behind: its next batches hold up to
    ``catch_up_batch_size`` events (``None``, or less than ``batch_size``:
    ``batch_size``) until one comes back short, so catching up takes fewer,
    larger transactions while live batches stay small.
    With ``read_ahead`` (not with ``concurrent_sources``), while a full batch is
    applied and committed the next batch of its source is read, on a second
    connection: a source catching up then reads as the database applies.
    """
    if not subscription_requests:
        raise ValueError(
            f"subscriber group '{subscriber_group}' requests no event sources: "
            "give at least one category or stream"
        )
    for request in subscription_requests:
        check_readable(request)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if poison_attempts < 1:
        raise ValueError(f"poison_attempts must be at least 1, got {poison_attempts}")
    if claim_lease <= timedelta(0):
        raise ValueError(f"claim_lease must be positive, got {claim_lease}")
    if batch_timeout is not None and batch_timeout <= timedelta(0):
        raise ValueError(f"batch_timeout must be positive, got {batch_timeout}")
    if concurrent_batches is not None and concurrent_batches < 1:
        raise ValueError(
            f"concurrent_batches must be at least 1, got {concurrent_batches}"
        )
    if slow_batch <= timedelta(0):
        raise ValueError(f"slow_batch must be positive, got {slow_batch}")
    try:
        policy = PoisonPolicy(on_poison)
    except ValueError:
        raise ValueError(
            f"on_poison must be 'park' or 'stop', got {on_poison!r}"
        ) from None
    try:
        order = PoisonOrder(poison_order)
    except ValueError:
        raise ValueError(
            f"poison_order must be 'stream' or 'none', got {poison_order!r}"
        ) from None
    return TransactionalConsumer(
        group=subscriber_group,
        id=subscriber_id or uuid4().hex,
        node_id=node_id or f"{socket.gethostname()}-{os.getpid()}",
        subscription_requests=subscription_requests,
        processor=processor,
        checkpoint_store=checkpoint_store,
        event_reader=event_reader or checkpoint_store.event_reader(event_store),
        batch_size=batch_size,
        catch_up_batch_size=catch_up_batch_size,
        claim_lease=claim_lease,
        on_poison=policy,
        poison_attempts=poison_attempts,
        poison_order=order,
        metrics=metrics,
        concurrent_sources=concurrent_sources,
        batch_timeout=batch_timeout,
        read_ahead=read_ahead,
        concurrent_batches=concurrent_batches,
        slow_batch=slow_batch,
    )
