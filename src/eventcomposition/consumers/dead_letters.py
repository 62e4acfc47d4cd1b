"""Delivering parked events again, once their processor has been fixed."""

from collections.abc import Sequence
from dataclasses import dataclass, field

import structlog

from .batch import BatchProcessor
from .claims import DeadLetter, source_of
from .stores import CheckpointStore, EventReader

logger = structlog.get_logger("eventcomposition.consumers")


@dataclass
class RetryResult:
    applied: list[DeadLetter] = field(default_factory=list)
    failed: list[tuple[DeadLetter, str]] = field(default_factory=list)
    """Letters still parked, with why (the processor failed again, or the event is
    gone from the store)."""


async def retry_dead_letters(
    *,
    checkpoint_store: CheckpointStore,
    event_reader: EventReader,
    group: str,
    processor: BatchProcessor,
    only: Sequence[DeadLetter] | None = None,
) -> RetryResult:
    """Deliver ``group``'s parked events (or ``only`` these) to ``processor`` again.

    Each event goes alone, in its own transaction that also removes its dead
    letter: it is applied once, even when two retries run at once. Events are
    retried after their source went on, so a processor must accept an old event
    after newer ones of its source.
    """
    letters = only if only is not None else await checkpoint_store.dead_letters(group)
    result = RetryResult()
    for letter in letters:
        if letter.group != group:
            continue
        event = await event_reader.read_one(
            source_of(letter.source), letter.sequence_number
        )
        if event is None or event.id != letter.event_id:
            result.failed.append((letter, "the event is no longer in the store"))
            continue
        try:
            async with checkpoint_store.transaction() as transaction:
                if not await checkpoint_store.remove_dead_letter(transaction, letter):
                    continue
                await processor.process_batch([event], transaction)
        except Exception as error:
            result.failed.append((letter, f"{type(error).__name__}: {error}"))
            await logger.awarning(
                "consumer.dead-letter-retry-failed",
                group=group,
                source=letter.source,
                sequence_number=letter.sequence_number,
                error=f"{type(error).__name__}: {error}",
            )
            continue
        result.applied.append(letter)
        await logger.ainfo(
            "consumer.dead-letter-applied",
            group=group,
            source=letter.source,
            sequence_number=letter.sequence_number,
        )
    return result
