"""Claims, checkpoints and dead letters in memory, for tests and single processes.

A transaction stages its writes and applies them all when it ends without error,
after checking every claim it carries: nothing in between can interleave, because
the check and the writes run without awaiting. Processors apply their own effects
with ``Transaction.on_commit``.
"""

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from psycopg import AsyncConnection

from .batch import Transaction, TransactionUnsupportedError
from .claims import (
    Claim,
    ClaimRecord,
    DeadLetter,
    Holder,
    checkpoint_moved,
    claim_lost,
)
from .partitions import (
    RETIRED_HOLDER,
    WHOLE_CATEGORY,
    CategoryPartition,
    Floor,
    check_caught_up,
    former_keys,
    repartition_starts,
)
from .stores import CheckpointStore, ParkedStreamsChangedError, Unchecked

_RETIRED_UNTIL = datetime(9999, 12, 31, tzinfo=UTC)


def _utc_now() -> datetime:
    return datetime.now(UTC)


class InMemoryTransaction(Transaction):
    """Stages fence checks and writes; ``on_commit`` callbacks carry the effects."""

    def __init__(self) -> None:
        super().__init__()
        self.checks: list[Callable[[], None]] = []
        self.writes: list[Callable[[], None]] = []

    @property
    def connection(self) -> AsyncConnection[Any]:
        raise TransactionUnsupportedError(
            "an in-memory transaction has no database connection: apply the batch's "
            "effects with transaction.on_commit(callback), or use the PostgreSQL "
            "checkpoint store"
        )

    def commit_now(self) -> None:
        for check in self.checks:
            check()
        for write in self.writes:
            write()


@dataclass
class _StoredClaim:
    holder: Holder
    epoch: int
    lease_expires_at: datetime
    released: bool


class InMemoryCheckpointStore(CheckpointStore):
    """One process's claims, checkpoints and dead letters; ``clock`` is replaceable
    so that tests can expire leases without waiting."""

    def __init__(self, clock: Callable[[], datetime] = _utc_now) -> None:
        self._clock = clock
        self._claims: dict[tuple[str, str], _StoredClaim] = {}
        self._positions: dict[tuple[str, str], int] = {}
        self._dead_letters: dict[tuple[str, str, int], DeadLetter] = {}
        self._partitionings: dict[tuple[str, str], int] = {}
        self._floors: dict[tuple[str, str], tuple[Floor, ...]] = {}

    async def now(self) -> datetime:
        return self._clock()

    async def claim(
        self, group: str, source: str, holder: Holder, lease: timedelta
    ) -> Claim | None:
        now = self._clock()
        current = self._claims.get((group, source))
        if current is not None and not (
            current.released
            or current.lease_expires_at <= now
            or current.holder == holder
        ):
            return None
        epoch = 1 if current is None else current.epoch + 1
        self._claims[(group, source)] = _StoredClaim(holder, epoch, now + lease, False)
        return Claim(group, source, holder, epoch)

    def _holds(self, claim: Claim) -> _StoredClaim | None:
        current = self._claims.get((claim.group, claim.source))
        if (
            current is None
            or current.released
            or current.holder != claim.holder
            or current.epoch != claim.epoch
        ):
            return None
        return current

    async def renew(self, claims: Sequence[Claim], lease: timedelta) -> set[Claim]:
        held = set()
        for claim in claims:
            current = self._holds(claim)
            if current is not None:
                current.lease_expires_at = self._clock() + lease
                held.add(claim)
        return held

    async def release(self, claim: Claim) -> None:
        current = self._holds(claim)
        if current is not None:
            current.released = True
            current.lease_expires_at = self._clock()

    async def claims(self, group: str) -> Sequence[ClaimRecord]:
        return [
            ClaimRecord(
                group=claim_group,
                source=source,
                holder=stored.holder,
                epoch=stored.epoch,
                lease_expires_at=stored.lease_expires_at,
                released=stored.released,
            )
            for (claim_group, source), stored in self._claims.items()
            if claim_group == group
        ]

    async def positions(self, group: str) -> Mapping[str, int]:
        return {
            source: position
            for (position_group, source), position in self._positions.items()
            if position_group == group
        }

    async def position(self, group: str, source: str) -> int | None:
        return self._positions.get((group, source))

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        transaction = InMemoryTransaction()
        yield transaction
        transaction.commit_now()
        await transaction.run_commit_callbacks()

    async def advance(
        self,
        transaction: Transaction,
        claim: Claim,
        sequence_number: int,
        lease: timedelta,
        *,
        expected: int | Unchecked | None = Unchecked.ANY,
    ) -> None:
        staged = _staged(transaction)

        def check() -> None:
            if self._holds(claim) is None:
                raise claim_lost(claim)
            found = self._positions.get((claim.group, claim.source))
            if not isinstance(expected, Unchecked) and found != expected:
                raise checkpoint_moved(claim, expected, found)

        def write() -> None:
            self._positions[(claim.group, claim.source)] = sequence_number
            current = self._holds(claim)
            if current is not None:
                current.lease_expires_at = self._clock() + lease

        staged.checks.append(check)
        staged.writes.append(write)

    async def park(
        self,
        transaction: Transaction,
        claim: Claim,
        dead_letter: DeadLetter,
        lease: timedelta,
    ) -> None:
        key = (dead_letter.group, dead_letter.source, dead_letter.sequence_number)
        _staged(transaction).writes.append(
            lambda: self._dead_letters.__setitem__(key, dead_letter)
        )
        await self.advance(transaction, claim, dead_letter.sequence_number, lease)

    async def hold(
        self, transaction: Transaction, dead_letters: Sequence[DeadLetter]
    ) -> None:
        if not dead_letters:
            return
        staged = _staged(transaction)
        letters = list(dead_letters)
        first = letters[0]
        streams = sorted({letter.stream for letter in letters})

        def check() -> None:
            parked = self._streams_with_letters(first.group, first.source)
            gone = [stream for stream in streams if stream not in parked]
            if gone:
                raise ParkedStreamsChangedError(gone)

        def write() -> None:
            for letter in letters:
                key = (letter.group, letter.source, letter.sequence_number)
                self._dead_letters[key] = letter

        staged.checks.append(check)
        staged.writes.append(write)

    def _streams_with_letters(self, group: str, source: str) -> set[str]:
        return {
            letter.stream
            for (letter_group, letter_source, _), letter in self._dead_letters.items()
            if letter_group == group and letter_source == source and letter.stream
        }

    async def parked_streams(self, group: str, source: str) -> set[str]:
        return self._streams_with_letters(group, source)

    async def prepare_partition(
        self, group: str, partition: CategoryPartition
    ) -> tuple[Floor, ...] | None:
        whole = (group, partition.category) in self._positions
        count = self._partitionings.setdefault(
            (group, partition.category),
            WHOLE_CATEGORY if whole else partition.count,
        )
        if count != partition.count:
            now = self._clock()
            formers = former_keys(partition.category, count)
            for key in formers:
                claim = self._claims.get((group, key))
                if (
                    claim is not None
                    and not claim.released
                    and (claim.lease_expires_at > now)
                ):
                    return None
            self._repartition(group, partition, formers, now)
        return self._floors.get((group, partition.key), ())

    def _repartition(
        self,
        group: str,
        partition: CategoryPartition,
        formers: list[str],
        now: datetime,
    ) -> None:
        checkpoints = {key: self._positions.get((group, key)) for key in formers}
        check_caught_up(
            group,
            checkpoints,
            {key: self._floors.get((group, key), ()) for key in formers},
        )
        starts = repartition_starts(
            {index: checkpoints[key] for index, key in enumerate(formers)},
            len(formers),
            partition.count,
        )
        for key in formers:
            current = self._claims.get((group, key))
            epoch = 1 if current is None else current.epoch + 1
            self._claims[(group, key)] = _StoredClaim(
                Holder(RETIRED_HOLDER, ""), epoch, _RETIRED_UNTIL, False
            )
            self._floors.pop((group, key), None)
        for index, start in starts.items():
            key = CategoryPartition(partition.category, index, partition.count).key
            current = self._claims.get((group, key))
            if current is not None:
                current.released, current.lease_expires_at = True, now
                current.epoch += 1
            if start.checkpoint is None:
                self._positions.pop((group, key), None)
            else:
                self._positions[(group, key)] = start.checkpoint
            self._floors[(group, key)] = start.floors
        self._partitionings[(group, partition.category)] = partition.count

    async def dead_letters(self, group: str | None = None) -> Sequence[DeadLetter]:
        return sorted(
            (
                letter
                for letter in self._dead_letters.values()
                if group is None or letter.group == group
            ),
            key=lambda letter: (letter.parked_at, letter.sequence_number),
        )

    async def remove_dead_letter(
        self, transaction: Transaction, dead_letter: DeadLetter
    ) -> bool:
        key = (dead_letter.group, dead_letter.source, dead_letter.sequence_number)
        if key not in self._dead_letters:
            return False

        def write() -> None:
            self._dead_letters.pop(key, None)

        _staged(transaction).writes.append(write)
        return True


def _staged(transaction: Transaction) -> InMemoryTransaction:
    if not isinstance(transaction, InMemoryTransaction):
        raise TypeError(
            "the in-memory checkpoint store works with its own transactions only"
        )
    return transaction
