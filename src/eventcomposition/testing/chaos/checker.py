"""The history checker: plain functions over a recorded ``History``.

Each check returns the violations it finds, as one-line descriptions; ``check``
runs them all and measures the recovery after each fault. A run passes when no
check finds anything.

- ``lost_and_duplicated``: every published event applied exactly once;
- ``out_of_order``: each stream's events applied in their order;
- ``backward_checkpoints``: no checkpoint moves backwards;
- ``overlapping_holders``: no two holders (claim epochs) of one source commit at
  overlapping times, and one epoch is one node's;
- ``two_leaders``: no coordinator writes allocations without the leadership lock,
  and no coordinator writes between two writes of another one close together;
- ``lost_by_server``: acknowledged events no longer in the store: lost by the
  server itself in a crash (it commits asynchronously, so it may), reported
  apart and not held against consumers (they cannot apply what is gone); one
  lost without a crash after its acknowledgement is a violation;
- ``recoveries``: after each fault, the sources it held up are applied again
  within the bound of its kind (extended while other faults overlap it); while
  one source of a node is blocked, the node's other sources apply each event
  within that bound.
"""

import math
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from .history import (
    DATABASE_FAULTS,
    AllocationWrite,
    Applied,
    Fault,
    FaultKind,
    History,
    Published,
)

# Two writes of one leader closer than this: another coordinator's write between
# them means both were leading at once.
LEADER_WRITE_WINDOW = 1.0


@dataclass(frozen=True)
class Recovery:
    """How long a fault held its sources up, against the bound of its kind."""

    fault: Fault
    seconds: float | None
    """None: some affected source never resumed."""
    bound: float
    """The bound it was checked against: its kind's, extended by overlaps."""
    base: float = 0.0
    """The bound of its kind alone."""

    @property
    def overlapped(self) -> bool:
        return self.bound > self.base

    @property
    def within_bound(self) -> bool:
        return self.seconds is not None and self.seconds <= self.bound


@dataclass(frozen=True)
class Report:
    """The checker's findings."""

    events: int
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    out_of_order: list[str] = field(default_factory=list)
    backward: list[str] = field(default_factory=list)
    overlapping: list[str] = field(default_factory=list)
    leaders: list[str] = field(default_factory=list)
    readiness: list[str] = field(default_factory=list)
    recoveries: list[Recovery] = field(default_factory=list)
    lost_by_server: list[str] = field(default_factory=list)
    """Acknowledged events a server crash took (not violations)."""
    vanished: list[str] = field(default_factory=list)
    """Acknowledged events gone from the store with no crash to explain it."""

    @property
    def slow_recoveries(self) -> list[str]:
        return [
            f"{r.fault.kind} of {r.fault.target} at {r.fault.started:.1f}: "
            + (
                "its sources never resumed"
                if r.seconds is None
                else f"resumed after {r.seconds:.1f} s, bound {r.bound:.1f} s"
            )
            for r in self.recoveries
            if not r.within_bound
        ]

    @property
    def violations(self) -> list[str]:
        return [
            *(f"lost: {v}" for v in self.lost),
            *(f"vanished from the store: {v}" for v in self.vanished),
            *(f"duplicated: {v}" for v in self.duplicated),
            *(f"out of order: {v}" for v in self.out_of_order),
            *(f"checkpoint backwards: {v}" for v in self.backward),
            *(f"overlapping holders: {v}" for v in self.overlapping),
            *(f"two leaders: {v}" for v in self.leaders),
            *(f"readiness: {v}" for v in self.readiness),
            *(f"slow recovery: {v}" for v in self.slow_recoveries),
        ]

    @property
    def passed(self) -> bool:
        return not self.violations


def lost_and_duplicated(
    published: Mapping[str, Published], applied: Sequence[Applied]
) -> tuple[list[str], list[str]]:
    """Published events never applied, and events applied more than once."""
    counts = Counter(record.event_id for record in applied)
    lost = sorted(
        _described(event_id, published[event_id])
        for event_id in published
        if counts[event_id] == 0
    )
    duplicated = sorted(
        f"{event_id} applied {count} times"
        for event_id, count in counts.items()
        if count > 1
    )
    unknown = sorted(event_id for event_id in counts if event_id not in published)
    duplicated += [f"{event_id} applied but never published" for event_id in unknown]
    return lost, duplicated


def _described(event_id: str, where: Published) -> str:
    return f"{event_id} ({where.source} {where.stream} position {where.position})"


def lost_by_server(history: History) -> tuple[list[str], list[str]]:
    """Acknowledged events no longer in the store: those a database crash after
    their acknowledgement explains (the server may lose what it acknowledged
    but had not yet written), and those nothing explains."""
    crashes = [
        fault.started for fault in history.faults if fault.kind is FaultKind.DB_CRASH
    ]
    explained, unexplained = [], []
    for event_id, where in sorted(history.acknowledged.items()):
        if event_id in history.published:
            continue
        # The run's clock and the server's are one machine's; a second of slack.
        if any(crash >= where.at - 1.0 for crash in crashes):
            explained.append(_described(event_id, where))
        else:
            unexplained.append(_described(event_id, where) + ", with no crash after")
    return explained, unexplained


def out_of_order(applied: Sequence[Applied]) -> list[str]:
    """Events applied after a later event of their stream (by commit time)."""
    by_stream: dict[tuple[str, str], list[Applied]] = defaultdict(list)
    for record in applied:
        by_stream[record.source, record.stream].append(record)
    found = []
    for (source, stream), records in sorted(by_stream.items()):
        highest: Applied | None = None
        for record in sorted(records, key=lambda r: (r.at, r.position)):
            if highest is not None and record.position < highest.position:
                found.append(
                    f"{source} {stream}: position {record.position} applied at "
                    f"{record.at:.3f}, after position {highest.position}"
                )
            if highest is None or record.position > highest.position:
                highest = record
    return found


def backward_checkpoints(history: History) -> list[str]:
    """Checkpoint writes that moved a source's checkpoint backwards."""
    found = []
    for move in history.checkpoints:
        if move.before is not None and move.after < move.before:
            found.append(
                f"{move.source} moved from {move.before} to {move.after} "
                f"at {move.at:.3f}"
            )
    return found


def overlapping_holders(applied: Sequence[Applied]) -> list[str]:
    """Two epochs of one source committing at overlapping times, or one epoch
    committed by two nodes."""
    spans: dict[tuple[str, int], list[Applied]] = defaultdict(list)
    for record in applied:
        spans[record.source, record.epoch].append(record)
    found = []
    by_source: dict[str, list[tuple[float, float, int, str]]] = defaultdict(list)
    for (source, epoch), records in spans.items():
        nodes = sorted({record.node for record in records})
        if len(nodes) > 1:
            found.append(f"{source} epoch {epoch} committed by {', '.join(nodes)}")
        times = [record.at for record in records]
        by_source[source].append((min(times), max(times), epoch, nodes[0]))
    for source, intervals in sorted(by_source.items()):
        intervals.sort()
        _, end, epoch, node = intervals[0]
        for start, finish, later, other in intervals[1:]:
            if start < end:
                found.append(
                    f"{source}: epoch {later} ({other}) committed from "
                    f"{start:.3f} while epoch {epoch} ({node}) did until {end:.3f}"
                )
            if finish > end:
                end, epoch, node = finish, later, other
    return found


def two_leaders(
    allocations: Sequence[AllocationWrite], window: float = LEADER_WRITE_WINDOW
) -> list[str]:
    """Allocation writes of a coordinator without the leadership lock, or between
    two close writes of another coordinator."""
    found = [
        f"{write.node} wrote allocations at {write.at:.3f} without the lock"
        for write in allocations
        if not write.held_leadership
    ]
    writes = sorted(allocations, key=lambda write: write.at)
    last_by: dict[str, float] = {}
    for index, write in enumerate(writes):
        for node, last in last_by.items():
            if node == write.node or write.at - last >= window:
                continue
            # ``node`` wrote just before: does it write again soon after?
            if any(
                later.node == node and later.at - last < window
                for later in writes[index + 1 :]
            ):
                found.append(
                    f"{write.node} wrote allocations at {write.at:.3f} between "
                    f"writes of {node}"
                )
                break
        last_by[write.node] = write.at
    return found


def recoveries(history: History, bounds: Callable[[Fault], float]) -> list[Recovery]:
    """For each fault, how long until every source it held up was applied again.

    Measured from the fault's start for node faults (a takeover must not wait
    for the node) and from its end for faults of the database. The bound of a
    fault is ``bounds(fault)``, extended to the end (plus bound) of any fault
    that overlaps it.
    """
    first_after: dict[str, list[float]] = defaultdict(list)
    for record in history.applied:
        first_after[record.source].append(record.at)
    for times in first_after.values():
        times.sort()
    measured = []
    for fault in history.faults:
        since = _reference(fault)
        deadline = since + bounds(fault)
        for other in history.faults:
            if (
                other is not fault
                and other.started <= deadline
                and (other.ended >= fault.started)
            ):
                deadline = max(deadline, _reference(other) + bounds(other))
        if fault.kind is FaultKind.BLOCK:
            delay = _worst_delay(history, fault)
            measured.append(
                Recovery(
                    fault,
                    None if math.isinf(delay) else delay,
                    deadline - since,
                    bounds(fault),
                )
            )
            continue
        resumed: list[float] = []
        for source in fault.affected:
            if not _pending_after(history, source, since):
                continue  # nothing of it to apply: nothing to resume
            later = [at for at in first_after.get(source, []) if at > since]
            resumed.append(later[0] - since if later else math.inf)
        if not resumed:
            seconds: float | None = 0.0
        else:
            worst = max(resumed)
            seconds = None if math.isinf(worst) else worst
        measured.append(Recovery(fault, seconds, deadline - since, bounds(fault)))
    return measured


def _worst_delay(history: History, fault: Fault) -> float:
    """The longest a ``BLOCK``'s unblocked sources took to apply an event
    published while it lasted (they must go on as usual)."""
    applied_at: dict[str, float] = {}
    for record in history.applied:
        applied_at.setdefault(record.event_id, record.at)
    delays = [
        applied_at.get(event_id, math.inf) - where.at
        for event_id, where in history.published.items()
        if where.source in fault.affected and fault.started <= where.at <= fault.ended
    ]
    return max(delays, default=0.0)


def _reference(fault: Fault) -> float:
    if fault.kind in DATABASE_FAULTS or fault.kind is FaultKind.EXHAUST:
        return fault.ended
    return fault.started


def _pending_after(history: History, source: str, since: float) -> bool:
    """Whether ``source`` had an event to apply after ``since``: one published
    since, or one published before and applied only since (or never)."""
    applied_at = {record.event_id: record.at for record in history.applied}
    return any(
        where.source == source
        and (where.at >= since or applied_at.get(event_id, math.inf) > since)
        for event_id, where in history.published.items()
    )


def readiness_failures(history: History, lease: float, bound: float) -> list[str]:
    """Partitioned nodes that did not report not ready within ``lease`` (plus a
    poll) of the cut, or ready again within ``bound`` of the heal."""
    found = []
    for probe in history.readiness:
        if probe.not_ready_at is None or probe.not_ready_at - probe.cut_at > lease:
            found.append(
                f"{probe.node} cut at {probe.cut_at:.1f} did not report not ready "
                f"within {lease:.1f} s"
            )
        if (
            probe.ready_again_at is None
            or probe.ready_again_at - probe.healed_at > bound
        ):
            found.append(
                f"{probe.node} healed at {probe.healed_at:.1f} was not ready again "
                f"within {bound:.1f} s"
            )
    return found


def check(
    history: History,
    bounds: Callable[[Fault], float],
    *,
    readiness_within: float = math.inf,
    ready_again_within: float = math.inf,
) -> Report:
    """Every check over ``history``."""
    lost, duplicated = lost_and_duplicated(history.published, history.applied)
    by_server, vanished = lost_by_server(history)
    return Report(
        events=len(history.published),
        lost=lost,
        duplicated=duplicated,
        out_of_order=out_of_order(history.applied),
        backward=backward_checkpoints(history),
        overlapping=overlapping_holders(history.applied),
        leaders=two_leaders(history.allocations),
        readiness=readiness_failures(history, readiness_within, ready_again_within),
        recoveries=recoveries(history, bounds),
        lost_by_server=by_server,
        vanished=vanished,
    )


def p99(values: Sequence[float]) -> float:
    """The 99th percentile (nearest rank) of ``values``."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]
