"""Claims: which subscriber may commit work for a source of a group, and since when.

A subscriber claims a source before it reads it. Each claim of a source gets the
next epoch, and every checkpoint write checks the holder and the epoch in its own
transaction, so a subscriber that lost a source cannot commit for it any more.
"""

from dataclasses import dataclass
from datetime import datetime

from logicblocks.event.types import (
    CategoryIdentifier,
    EventSourceIdentifier,
    StoredEvent,
    StreamIdentifier,
)

from .batch import CheckpointMovedError, ClaimLostError
from .partitions import CategoryPartition, partition_from_key
from .source_keys import source_key

type SourceRef = EventSourceIdentifier | str
"""A source, by identifier or by its ``source_key`` (``category``,
``category/stream`` or ``category#index/count``)."""


def key_of(source: SourceRef) -> str:
    return source if isinstance(source, str) else source_key(source)


def source_of(key: str) -> CategoryIdentifier | StreamIdentifier | CategoryPartition:
    """The identifier a ``source_key`` names (``category``, ``category/stream`` or
    a partition, ``category#index/count``)."""
    partition = partition_from_key(key)
    if partition is not None:
        return partition
    category, slash, stream = key.partition("/")
    if slash:
        return StreamIdentifier(category=category, stream=stream)
    return CategoryIdentifier(category=category)


@dataclass(frozen=True)
class Holder:
    """Who holds a claim: a node and one of its subscribers."""

    node_id: str
    subscriber_id: str

    def __str__(self) -> str:
        return f"{self.node_id}/{self.subscriber_id}"


@dataclass(frozen=True)
class Claim:
    """A claim held by this process: the fence its commits carry."""

    group: str
    source: str
    holder: Holder
    epoch: int


@dataclass(frozen=True)
class ClaimRecord:
    """A claim as stored, for readers such as a rebalancing coordinator."""

    group: str
    source: str
    holder: Holder
    epoch: int
    lease_expires_at: datetime
    released: bool

    def is_free(self, now: datetime) -> bool:
        """Whether another subscriber may claim the source at ``now``."""
        return self.released or self.lease_expires_at <= now


@dataclass(frozen=True)
class DeadLetter:
    """An event parked after its processor failed it too many times, or one
    waiting behind such an event of its stream (``waiting``)."""

    group: str
    source: str
    sequence_number: int
    event_id: str
    error: str
    attempts: int
    parked_at: datetime
    stream: str = ""
    """The event's stream, as ``category/stream`` (empty for letters parked before
    streams were recorded: those hold nothing back)."""
    waiting: bool = False
    """Parked because an earlier event of its stream is parked (never tried)."""


def stream_key(event: StoredEvent) -> str:
    """The stream an event belongs to, as ``category/stream``."""
    return f"{event.category}/{event.stream}"


def claim_lost(claim: Claim) -> ClaimLostError:
    return ClaimLostError(
        f"source '{claim.source}' of group '{claim.group}' is no longer claimed by "
        f"{claim.holder} (epoch {claim.epoch}): its batch was rolled back"
    )


def checkpoint_moved(
    claim: Claim, expected: int | None, found: int | None
) -> CheckpointMovedError:
    return CheckpointMovedError(
        f"the checkpoint of source '{claim.source}' of group '{claim.group}' is "
        f"{found}, not {expected} as {claim.holder} read it: its batch was rolled "
        "back and the source is read again from the stored checkpoint"
    )
