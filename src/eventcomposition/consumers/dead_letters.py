"""Delivering parked events again, once their processor has been fixed.

Dead letters are retried stream by stream: a stream's letters (the event that
failed and those parked behind it) are applied in sequence-number order, and a
stream stops at its first failure, so its later events stay parked behind it.
Each event goes alone, in a transaction that also removes its dead letter: it is
applied once, even when two retries run at once, and a consumer parking more of
the stream's events meanwhile either waits for that transaction or finds the
stream free and applies them itself (``CheckpointStore.hold``). Once a stream's
letters are gone, the letters parked behind them meanwhile are applied too.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field

import structlog

from .batch import BatchProcessor, EventFailedError
from .claims import DeadLetter, source_of
from .handlers import Processor, as_batch_processor
from .stores import CheckpointStore, EventReader

logger = structlog.get_logger("eventcomposition.consumers")

type _StreamRef = tuple[str, str]


@dataclass
class RetryResult:
    applied: list[DeadLetter] = field(default_factory=list)
    failed: list[tuple[DeadLetter, str]] = field(default_factory=list)
    """Letters still parked, with why (the processor failed again, the event is
    gone from the store, or an earlier event of its stream is still parked)."""


def _stream_of(letter: DeadLetter) -> _StreamRef:
    # Letters parked before streams were recorded stand alone.
    return (letter.source, letter.stream or f"#{letter.sequence_number}")


async def retry_dead_letters(
    *,
    checkpoint_store: CheckpointStore,
    event_reader: EventReader,
    group: str,
    processor: Processor,
    only: Sequence[DeadLetter] | None = None,
) -> RetryResult:
    """Deliver ``group``'s parked events (or ``only`` these) to ``processor`` again,
    each stream's in order.

    ``processor`` is the group's ``BatchProcessor`` or ``EventHandler``. A letter
    is applied only once every earlier letter of its stream has gone: with
    ``only``, a letter behind one not in ``only`` stays parked. Under
    ``poison_order="none"`` the stream went on meanwhile, so the processor must
    accept an old event after newer ones of its stream.
    """
    batches = as_batch_processor(processor)
    wanted = {
        (letter.source, letter.sequence_number)
        for letter in (only or ())
        if letter.group == group
    }
    by_stream: dict[_StreamRef, list[DeadLetter]] = {}
    for letter in await checkpoint_store.dead_letters(group):
        by_stream.setdefault(_stream_of(letter), []).append(letter)
    result = RetryResult()
    for stream, letters in by_stream.items():
        if only is not None and not any(
            (letter.source, letter.sequence_number) in wanted for letter in letters
        ):
            continue
        await _retry_stream(
            checkpoint_store,
            event_reader,
            group,
            batches,
            stream,
            letters,
            None if only is None else wanted,
            result,
        )
    return result


async def _letters_parked_since(
    store: CheckpointStore, group: str, stream: _StreamRef
) -> list[DeadLetter]:
    source, stream_name = stream
    if stream_name.startswith("#"):
        return []  # a letter from before streams were recorded stands alone
    return list(await store.stream_dead_letters(group, source, stream_name))


async def _retry_stream(
    store: CheckpointStore,
    reader: EventReader,
    group: str,
    processor: BatchProcessor,
    stream: _StreamRef,
    listed: list[DeadLetter],
    wanted: set[tuple[str, int]] | None,
    result: RetryResult,
) -> None:
    seen: set[int] = set()
    letters = sorted(listed, key=lambda letter: letter.sequence_number)
    while letters:
        for index, letter in enumerate(letters):
            seen.add(letter.sequence_number)
            key = (letter.source, letter.sequence_number)
            if wanted is not None and key not in wanted:
                _still_waiting(result, letters[index + 1 :], letter, wanted)
                return
            outcome = await _retry_one(store, reader, group, processor, letter)
            if isinstance(outcome, str):
                result.failed.append((letter, outcome))
                _still_waiting(result, letters[index + 1 :], letter, wanted)
                return
            if outcome:
                result.applied.append(letter)
        # Letters parked behind these meanwhile: read the stream again.
        letters = [
            letter
            for letter in await _letters_parked_since(store, group, stream)
            if letter.sequence_number not in seen
        ]


def _still_waiting(
    result: RetryResult,
    behind: Sequence[DeadLetter],
    blocker: DeadLetter,
    wanted: set[tuple[str, int]] | None,
) -> None:
    for letter in behind:
        if wanted is None or (letter.source, letter.sequence_number) in wanted:
            result.failed.append(
                (
                    letter,
                    f"waiting behind sequence number {blocker.sequence_number} "
                    "of its stream, still parked",
                )
            )


async def _retry_one(
    store: CheckpointStore,
    reader: EventReader,
    group: str,
    processor: BatchProcessor,
    letter: DeadLetter,
) -> bool | str:
    """Apply ``letter``'s event and remove the letter: True once done, False when
    another retry removed it first, why not when it failed."""
    event = await reader.read_one(source_of(letter.source), letter.sequence_number)
    if event is None or event.id != letter.event_id:
        return "the event is no longer in the store"
    try:
        async with store.transaction() as transaction:
            if not await store.remove_dead_letter(transaction, letter):
                return False
            await processor.process_batch([event], transaction)
            await transaction.write_batch_states()
    except Exception as error:
        cause = error.cause if isinstance(error, EventFailedError) else error
        why = f"{type(cause).__name__}: {cause}"
        await logger.awarning(
            "consumer.dead-letter-retry-failed",
            group=group,
            source=letter.source,
            sequence_number=letter.sequence_number,
            error=why,
        )
        return why
    await logger.ainfo(
        "consumer.dead-letter-applied",
        group=group,
        source=letter.source,
        sequence_number=letter.sequence_number,
    )
    return True
