"""``NodeMetrics``: what a node's consumers and coordinator record for Prometheus.

Consumers and coordinators take a ``NodeMetrics`` and call it as they work. The base
class records nothing (every method returns at once), so code that records costs
next to nothing when metrics are off. ``PrometheusNodeMetrics`` records into its own
``CollectorRegistry`` (never prometheus-client's global one), so several nodes in one
process, and the tests, stay apart; the node's HTTP server exposes that registry.

Sources are labelled with ``source_label``: ``log``, ``category:orders``,
``stream:orders/o-1``.

Every kind of consumer records: transactional consumers per committed batch
(``batch_processed``), per-event subscription consumers per processed event
(``event_processed``). A series is shown only for what the node knows: the lag of a
held source whose checkpoint or head could not be read is absent (never 0, never
the last value read), and a source handed away drops its lag series.
"""

from collections.abc import Iterable
from typing import TYPE_CHECKING

from logicblocks.event.types import (
    CategoryIdentifier,
    EventSourceIdentifier,
    LogIdentifier,
    StreamIdentifier,
)
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

if TYPE_CHECKING:
    from .lag import SourceLag

PREFIX = "eventcomposition"

# One event through a per-event processor: from well under a millisecond to a
# slow projection's seconds.
EVENT_DURATION_BUCKETS = (
    0.0001,
    0.0005,
    0.001,
    0.005,
    0.01,
    0.05,
    0.1,
    0.5,
    1.0,
    5.0,
)

# Batches of a few events take milliseconds; a batch of 500 with a slow projection
# may take seconds.
BATCH_DURATION_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


def source_label(source: EventSourceIdentifier) -> str:
    """A short, stable label for an event source, as used in metrics and ``/status``."""
    match source:
        case LogIdentifier():
            return "log"
        case CategoryIdentifier(category=category):
            return f"category:{category}"
        case StreamIdentifier(category=category, stream=stream):
            return f"stream:{category}/{stream}"
    # Imported here: the consumers package records its batches through this module.
    from .consumers.partitions import CategoryPartition

    if isinstance(source, CategoryPartition):
        return f"partition:{source.key}"
    return repr(source)


class NodeMetrics:
    """Records nothing: the metrics of a node that does not expose any.

    Subclasses record; callers hold a ``NodeMetrics`` and never check which.
    """

    def batch_processed(
        self, group: str, source: EventSourceIdentifier, events: int, seconds: float
    ) -> None:
        """A batch of ``events`` events of ``source`` processed in ``seconds``."""

    def event_processed(
        self, group: str, source: EventSourceIdentifier, seconds: float
    ) -> None:
        """One event of ``source`` processed by a per-event consumer in ``seconds``."""

    def consumer_failed(self, group: str, source: EventSourceIdentifier) -> None:
        """Processing ``source`` for ``group`` failed (the batch was not committed,
        or a per-event processor raised)."""

    def dead_lettered(self, group: str, events: int = 1) -> None:
        """``events`` events of ``group`` parked as dead letters."""

    def allocation_changed(self, changes: int = 1) -> None:
        """The coordinator changed ``changes`` sources' allocations."""

    def leadership_changed(self, leading: bool) -> None:
        """This node's coordinator became the leader, or stopped being it."""

    def holdings_observed(
        self, holdings: Iterable["SourceLag"], groups: Iterable[str] = ()
    ) -> None:
        """The sources this node holds, with their lag, as just read; ``groups``
        are the node's subscriber groups (those holding nothing count 0)."""

    def holdings_unknown(
        self, held: Iterable[tuple[str, EventSourceIdentifier]], groups: Iterable[str]
    ) -> None:
        """The lag could not be read: none is known. ``held`` are the (group,
        source) pairs the node holds, as it knows them itself."""

    def rebuild_progressed(self, group: str, version: int, progress: float) -> None:
        """A rebuild of ``group`` to ``version`` reached ``progress`` (0 to 1; 1
        once swapped in)."""


class PrometheusNodeMetrics(NodeMetrics):
    """Records a node's metrics into ``registry`` (a new one by default)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._processed = Counter(
            f"{PREFIX}_events_processed",
            "Events processed, per subscriber group and source: committed with their "
            "batch (transactional consumers), or returned from the processor "
            "(per-event subscription consumers).",
            ["group", "source"],
            registry=self.registry,
        )
        self._event_duration = Histogram(
            f"{PREFIX}_event_duration_seconds",
            "Time taken by a per-event subscription consumer's processor on one event.",
            buckets=EVENT_DURATION_BUCKETS,
            registry=self.registry,
        )
        self._batch_duration = Histogram(
            f"{PREFIX}_batch_duration_seconds",
            "Time taken to process one batch of events.",
            buckets=BATCH_DURATION_BUCKETS,
            registry=self.registry,
        )
        self._errors = Counter(
            f"{PREFIX}_consumer_errors",
            "Failures while processing a source, per subscriber group and source.",
            ["group", "source"],
            registry=self.registry,
        )
        self._dead_letters = Counter(
            f"{PREFIX}_dead_letters",
            "Events parked as dead letters, per subscriber group.",
            ["group"],
            registry=self.registry,
        )
        self._allocation_changes = Counter(
            f"{PREFIX}_allocation_changes",
            "Source allocations changed by this node's coordinator.",
            registry=self.registry,
        )
        self._leader = Gauge(
            f"{PREFIX}_coordinator_leader",
            "1 while this node's coordinator leads its cluster, else 0.",
            registry=self.registry,
        )
        self._lag = Gauge(
            f"{PREFIX}_consumer_lag_events",
            "How far a held source's checkpoint is behind the head of the source, in "
            "sequence numbers (global to the log: an upper bound on the events "
            "behind, 0 exactly when caught up).",
            ["group", "source"],
            registry=self.registry,
        )
        self._rebuild = Gauge(
            f"{PREFIX}_rebuild_progress_ratio",
            "How far a projection's rebuild has come, 0 to 1 (1 once swapped in), "
            "per subscriber group and version being built.",
            ["group", "version"],
            registry=self.registry,
        )
        self._held = Gauge(
            f"{PREFIX}_sources_held",
            "Sources this node holds, per subscriber group.",
            ["group"],
            registry=self.registry,
        )

    def batch_processed(
        self, group: str, source: EventSourceIdentifier, events: int, seconds: float
    ) -> None:
        self._processed.labels(group, source_label(source)).inc(events)
        self._batch_duration.observe(seconds)

    def event_processed(
        self, group: str, source: EventSourceIdentifier, seconds: float
    ) -> None:
        self._processed.labels(group, source_label(source)).inc()
        self._event_duration.observe(seconds)

    def consumer_failed(self, group: str, source: EventSourceIdentifier) -> None:
        self._errors.labels(group, source_label(source)).inc()

    def dead_lettered(self, group: str, events: int = 1) -> None:
        self._dead_letters.labels(group).inc(events)

    def allocation_changed(self, changes: int = 1) -> None:
        self._allocation_changes.inc(changes)

    def leadership_changed(self, leading: bool) -> None:
        self._leader.set(1 if leading else 0)

    def rebuild_progressed(self, group: str, version: int, progress: float) -> None:
        self._rebuild.labels(group, str(version)).set(progress)

    def holdings_observed(
        self, holdings: Iterable["SourceLag"], groups: Iterable[str] = ()
    ) -> None:
        # Replaced whole: a source handed to another node disappears from here.
        self._lag.clear()
        self._held.clear()
        held = dict.fromkeys(groups, 0)
        for holding in holdings:
            if (lag := holding.lag) is not None:
                self._lag.labels(holding.group, source_label(holding.source)).set(lag)
            held[holding.group] = held.get(holding.group, 0) + 1
        for group, count in held.items():
            self._held.labels(group).set(count)

    def holdings_unknown(
        self, held: Iterable[tuple[str, EventSourceIdentifier]], groups: Iterable[str]
    ) -> None:
        self._lag.clear()
        self._held.clear()
        counts = dict.fromkeys(groups, 0)
        for group, _ in held:
            counts[group] = counts.get(group, 0) + 1
        for group, count in counts.items():
            self._held.labels(group).set(count)
