"""What a fault-injection run records, as plain values the checker reads.

Times are seconds on one clock: the database server's (``clock_timestamp()``),
which the nemesis also reads when it records a fault, so that no two machines'
clocks need to agree.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import NamedTuple


class FaultKind(StrEnum):
    """The kinds of fault the nemesis injects."""

    KILL = "kill"
    """SIGKILL of an observer or the leading coordinator (restarted later)."""
    TERM = "term"
    """SIGTERM: the node drains and exits (restarted later)."""
    PAUSE = "pause"
    """SIGSTOP longer than the claim lease, then SIGCONT."""
    PARTITION = "partition"
    """The node's link to the database taken down while it runs, then back up."""
    DB_RESTART = "db-restart"
    """PostgreSQL stopped cleanly (fast shutdown) and started again."""
    DB_CRASH = "db-crash"
    """PostgreSQL's postmaster SIGKILLed, then started again (crash recovery)."""
    EXHAUST = "exhaust"
    """Every free connection slot taken by another client for a while."""
    BLOCK = "block"
    """One source of an observer blocked (its checkpoint row locked by another
    client, so that its next commit waits) for longer than the lease; the
    node's other sources (the fault's ``affected``) must go on meanwhile."""


DATABASE_FAULTS = frozenset({FaultKind.DB_RESTART, FaultKind.DB_CRASH})
NODE_FAULTS = frozenset(
    {FaultKind.KILL, FaultKind.TERM, FaultKind.PAUSE, FaultKind.PARTITION}
)


class Published(NamedTuple):
    """Where a published event is, and when it was published (0: unknown)."""

    source: str
    stream: str
    position: int
    at: float = 0.0


@dataclass(frozen=True)
class Applied:
    """One event applied by the test application, in a batch's transaction."""

    event_id: str
    source: str
    stream: str
    position: int
    node: str
    epoch: int
    transaction: int
    at: float


@dataclass(frozen=True)
class CheckpointMove:
    """A committed write of a checkpoint: from ``before`` (None: first) to ``after``."""

    source: str
    before: int | None
    after: int
    at: float


@dataclass(frozen=True)
class AllocationWrite:
    """A committed write of the coordinator's allocations, by ``node``, and whether
    that node held the leadership lock when it wrote."""

    node: str
    at: float
    held_leadership: bool = True


@dataclass(frozen=True)
class Fault:
    """One injected fault: ``started`` when it was injected, ``ended`` when it was
    healed (resumed, link up, server back, slots freed, lock let go; for kills
    and stops, when the node was started again), ``affected`` the sources it
    should hold up (for ``BLOCK``: those it must not hold up)."""

    kind: FaultKind
    target: str
    started: float
    ended: float
    affected: tuple[str, ...] = ()
    coordinator: bool = False


@dataclass(frozen=True)
class Readiness:
    """How a partitioned node's readiness probe answered: when it first reported
    not ready after the cut (None: never), and ready again after the heal."""

    node: str
    cut_at: float
    not_ready_at: float | None
    healed_at: float
    ready_again_at: float | None


@dataclass(frozen=True)
class History:
    """Everything a run recorded. ``published`` maps each event id that was
    published (committed, and in the store at the end) to its source, stream
    position and time; ``acknowledged`` each event id whose publish the server
    acknowledged, when it did (the run's clock, the same machine's). The server
    commits asynchronously: a crash may lose acknowledged events, which are then
    acknowledged but not published."""

    published: dict[str, Published]
    applied: Sequence[Applied]
    checkpoints: Sequence[CheckpointMove] = ()
    allocations: Sequence[AllocationWrite] = ()
    faults: Sequence[Fault] = ()
    readiness: Sequence[Readiness] = ()
    ended_at: float = 0.0
    acknowledged: Mapping[str, Published] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
