"""Per-event handlers: per-event code, batched, fenced, exactly-once processing.

An application writes an ``EventHandler`` (one method taking an event and the
transaction) and gives it to ``make_transactional_consumer`` in place of a
``BatchProcessor``. The consumer reads batches as for any processor and runs the
handler over each event of a batch, in order, inside the batch's transaction,
which also moves the checkpoint: a batch that rolls back changes nothing, a
committed one is never delivered again.

When the handler raises, the consumer knows which event failed: it commits the
events before it and counts an attempt against that one (no halving), then parks
it (or stops its source) after ``poison_attempts`` failures, as for batches.

A handler that writes one statement per event pays a round trip per event; one
that folds its events into ``transaction.batch_state(...)`` writes once per batch,
as fast as a ``BatchProcessor``.
"""

from abc import ABC, abstractmethod
from collections.abc import Sequence

from logicblocks.event.types import StoredEvent

from .batch import TRANSIENT_ERRORS, BatchProcessor, EventFailedError, Transaction


class EventHandler(ABC):
    """Applies one event within ``transaction``, the transaction of its batch.

    - On PostgreSQL, write through ``transaction.connection``: the writes commit
      with the checkpoint, so the handler needs no idempotency of its own.
    - In memory, apply effects with ``transaction.on_commit(callback)``.
    - For batch speed, fold the event into ``transaction.batch_state(key, create,
      write)``: ``write`` runs once per batch, inside its transaction.

    Raising rolls the batch back; the events before this one are then committed
    without it, and this one is tried again (see ``make_transactional_consumer``).
    Failures of the database (``TRANSIENT_ERRORS``) are retried, never parked.
    """

    @abstractmethod
    async def process_event(self, event: StoredEvent, transaction: Transaction) -> None:
        raise NotImplementedError


class EventHandlerBatches(BatchProcessor):
    """The ``BatchProcessor`` that runs ``handler`` over each event of a batch."""

    def __init__(self, handler: EventHandler) -> None:
        self.handler = handler

    async def process_batch(
        self, events: Sequence[StoredEvent], transaction: Transaction
    ) -> None:
        process_event = self.handler.process_event
        for event in events:
            try:
                await process_event(event, transaction)
            except TRANSIENT_ERRORS:
                raise
            except Exception as error:
                raise EventFailedError(event, error) from error
        await transaction.write_batch_states()


type Processor = BatchProcessor | EventHandler
"""What a transactional consumer applies events with: batches or single events."""


def as_batch_processor(processor: Processor) -> BatchProcessor:
    """``processor`` itself, or the batches of an ``EventHandler``."""
    if isinstance(processor, EventHandler):
        return EventHandlerBatches(processor)
    if isinstance(processor, BatchProcessor):
        return processor
    raise TypeError(
        f"a transactional consumer's processor must be a BatchProcessor or an "
        f"EventHandler, not {type(processor).__name__}: subclass one of them"
    )
