"""What a transactional consumer hands its processor: a batch and a transaction."""

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import psycopg
import structlog
from logicblocks.event.types import StoredEvent
from psycopg import AsyncConnection

from ..errors import EventCompositionError

logger = structlog.get_logger("eventcomposition.consumers")

type CommitCallback = Callable[[], Awaitable[None] | None]
type BatchStateWriter[S] = Callable[[S, "Transaction"], Awaitable[None]]

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    psycopg.OperationalError,  # unreachable, restarted, deadlock, serialisation, pool
    psycopg.InterfaceError,  # a connection closed under us
    ConnectionError,
    TimeoutError,
)
"""Failures of the database rather than of an event: retried, never parked."""


class ClaimLostError(EventCompositionError):
    """Another subscriber claimed the source: this one's batch was rolled back."""


class CheckpointMovedError(ClaimLostError):
    """The checkpoint is not where the consumer read from (a commit it was told
    of was lost, say in a crash of a server that acknowledges commits before they
    are durable): its batch was rolled back, and the source is read again from
    the stored checkpoint. Handled as a lost claim."""


class TransactionUnsupportedError(EventCompositionError):
    """The processor asked a transaction for something its store does not offer."""


class EventFailedError(EventCompositionError):
    """A processor names the event of its batch that failed, and why (``cause``).

    An ``EventHandler``'s batches raise it; a ``BatchProcessor`` may raise it too.
    The consumer then commits the events before that one and counts an attempt
    against it, without halving the batch to find it.
    """

    def __init__(self, event: StoredEvent, cause: Exception) -> None:
        self.event = event
        self.cause = cause
        super().__init__(
            f"event {event.id} (sequence number {event.sequence_number}) failed: "
            f"{type(cause).__name__}: {cause}"
        )


class Transaction(ABC):
    """The unit of work in which a batch's effects and its checkpoint commit.

    - On PostgreSQL, ``connection`` is the psycopg ``AsyncConnection`` inside the
      open transaction in which the checkpoint is written: whatever the processor
      writes through it commits or rolls back with the checkpoint.
    - In memory there is no connection; a processor applies its effects with
      ``on_commit``: the callbacks run, in order, only when the checkpoint commits,
      and are dropped when the batch rolls back. They should not fail: the
      checkpoint has moved by the time they run.

    ``on_commit`` works on PostgreSQL too (after the commit), e.g. to notify
    something in the process once the batch is durable.

    ``rebuilding`` is True when the batch rebuilds a new version of a projection
    from the start of the log (``eventcomposition.projections``) and False for live
    processing: a processor skips e-mails, outbound calls and other side effects
    that already happened when the events were first processed.

    ``batch_state`` lets per-event code (an ``EventHandler``) fold its events into
    one object per batch and write it once, at batch speed.
    """

    def __init__(self) -> None:
        self._callbacks: list[CommitCallback] = []
        self.rebuilding: bool = False
        self._batch_states: dict[object, tuple[Any, BatchStateWriter[Any]]] = {}

    def batch_state[S](
        self, key: object, create: Callable[[], S], write: "BatchStateWriter[S]"
    ) -> S:
        """The state ``key`` names in this transaction: made by ``create`` the
        first time it is asked for, then the same object for every event of the
        batch. Once the batch's last event has been handled, still inside the
        transaction, ``write(state, transaction)`` runs once for it (states in the
        order they were made): one write for the batch instead of one per event.
        A failure there rolls the batch back like a failing event, but names no
        event, so the batch is halved to find it."""
        found = self._batch_states.get(key)
        if found is None:
            state = create()
            self._batch_states[key] = (state, write)
            return state
        existing: S = found[0]
        return existing

    async def write_batch_states(self) -> None:
        """Run the ``batch_state`` writers (an ``EventHandler``'s batches do)."""
        states, self._batch_states = self._batch_states, {}
        for state, write in states.values():
            await write(state, self)

    @property
    @abstractmethod
    def connection(self) -> AsyncConnection[Any]:
        raise NotImplementedError

    def on_commit(self, callback: CommitCallback) -> None:
        self._callbacks.append(callback)

    async def run_commit_callbacks(self) -> None:
        """Run the callbacks once committed. A failing one is logged and skipped:
        the commit stands, so nothing may make the batch look failed."""
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            try:
                result = callback()
                if result is not None:
                    await result
            except Exception:
                await logger.aexception("consumer.commit-callback-failed")


class BatchProcessor(ABC):
    """Applies a batch of events of one source, in order, within ``transaction``.

    Raising rolls the batch back; the consumer then looks for the failing event
    (see ``make_transactional_consumer``).
    """

    @abstractmethod
    async def process_batch(
        self, events: Sequence[StoredEvent], transaction: Transaction
    ) -> None:
        raise NotImplementedError
