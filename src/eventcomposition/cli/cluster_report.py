"""What ``cluster status`` reports, as rich tables or as one JSON document.

``ClusterStatus`` is read from the database by ``cli.cluster``; this module only
presents it.
"""

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ..projections.versions import RebuildProgress

if TYPE_CHECKING:
    from rich.console import RenderableType

# The tables (rich) are imported where they are drawn: `cluster status --json`
# prints without them.


@dataclass(frozen=True)
class NodeStatus:
    """A node: one with live subscribers, or the leading coordinator."""

    node_id: str
    role: str
    last_heartbeat: datetime | None
    subscribers: int


@dataclass(frozen=True)
class SubscriberStatus:
    id: str
    node_id: str
    last_heartbeat: datetime
    requests: int


@dataclass(frozen=True)
class HoldingStatus:
    """A source held by a live subscriber, with its checkpoint, head and lag.

    ``events_per_second``: the events processed since the previous reading of a
    watch, per second; ``None`` when not known (a single reading, a source that was
    not held then, or a kind of source whose events cannot be counted).
    """

    node_id: str
    subscriber: str
    source: str
    checkpoint: int | None
    head: int | None
    lag: int | None
    """``None`` when not known (a source whose head cannot be read)."""
    events_per_second: float | None = None


@dataclass(frozen=True)
class MovingStatus:
    """A source between holders.

    Either revoked and not yet allocated again (``to`` is None), or allocated while
    the claim of a subscriber that no longer has it is not yet released (``claimed_by``
    names that subscriber, ``node/subscriber``).
    """

    source: str
    claimed_by: str | None
    to: str | None


@dataclass(frozen=True)
class GroupStatus:
    name: str
    subscribers: Sequence[SubscriberStatus]
    holdings: Sequence[HoldingStatus]
    moving: Sequence[MovingStatus]
    dead_letters: int


@dataclass(frozen=True)
class StaleAllocation:
    """A subscription of a subscriber that is no longer live."""

    node_id: str | None
    group: str
    subscriber: str
    sources: Sequence[str]


@dataclass(frozen=True)
class ClusterStatus:
    where: str
    at: datetime
    nodes: Sequence[NodeStatus]
    leader: str | None
    groups: Sequence[GroupStatus]
    stale: Sequence[StaleAllocation]
    rebuilds: Sequence[RebuildProgress] = ()
    """Projections being rebuilt (``eventcomposition.projections``)."""


def status_document(status: ClusterStatus) -> dict[str, Any]:
    """The status as one JSON-ready document, for scripts and tests."""
    return {
        "database": status.where,
        "at": status.at.isoformat(),
        "leader": status.leader,
        "nodes": [
            {
                "node_id": node.node_id,
                "role": node.role,
                "last_heartbeat": _timestamp(node.last_heartbeat),
                "subscribers": node.subscribers,
            }
            for node in status.nodes
        ],
        "groups": [
            {
                "group": group.name,
                "subscribers": [
                    {
                        "id": subscriber.id,
                        "node_id": subscriber.node_id,
                        "last_heartbeat": _timestamp(subscriber.last_heartbeat),
                        "requests": subscriber.requests,
                    }
                    for subscriber in group.subscribers
                ],
                "holdings": [
                    {
                        "node_id": holding.node_id,
                        "subscriber": holding.subscriber,
                        "source": holding.source,
                        "checkpoint": holding.checkpoint,
                        "head": holding.head,
                        "lag": holding.lag,
                    }
                    for holding in group.holdings
                ],
                "moving": [
                    {
                        "source": moving.source,
                        "claimed_by": moving.claimed_by,
                        "to": moving.to,
                    }
                    for moving in group.moving
                ],
                "dead_letters": group.dead_letters,
            }
            for group in status.groups
        ],
        "stale": [
            {
                "node_id": stale.node_id,
                "group": stale.group,
                "subscriber": stale.subscriber,
                "sources": list(stale.sources),
            }
            for stale in status.stale
        ],
        "rebuilds": [rebuild.as_json() for rebuild in status.rebuilds],
    }


def status_json(status: ClusterStatus) -> str:
    return json.dumps(status_document(status), indent=2)


def render_status(
    status: ClusterStatus, *, waited: float = 0, rates: bool = False
) -> str:
    """The report as plain text: live nodes, each group's work, then what departed
    nodes left behind (stale), each once. ``rates``: with each holding's events/s."""
    from .tables import render

    return render(*status_parts(status, waited=waited, rates=rates))


def status_parts(
    status: ClusterStatus, *, waited: float = 0, rates: bool = False
) -> list["RenderableType"]:
    """The report's lines and tables, for ``render`` or a live display."""
    from .tables import add_plain_row, new_table

    parts: list[RenderableType] = [f"cluster at {status.where}", ""]
    if any(node.last_heartbeat is not None for node in status.nodes):
        table = new_table(
            "node", "role", "last heartbeat", "subscribers", numeric={"subscribers"}
        )
        for node in status.nodes:
            add_plain_row(
                table,
                node.node_id,
                node.role,
                _ago(status.at, node.last_heartbeat),
                str(node.subscribers),
            )
        parts.append(table)
    elif waited > 0:
        parts.append(f"no node sent a heartbeat within {waited:g}s")
    else:
        parts.append(
            "no live nodes: nodes that are still starting show after their first "
            "heartbeat (use --wait SECONDS to wait for one); coordinator-only nodes "
            "register none"
        )
    parts.append(f"leading coordinator: {status.leader or _NO_LEADER}")
    if not any(group.holdings or group.moving for group in status.groups):
        parts.extend(["", "no live work allocated yet"])
    for group in status.groups:
        parts.extend(_group_parts(group, rates=rates))
    for rebuild in status.rebuilds:
        parts.extend(["", _rebuild_line(rebuild)])
    if status.stale:
        parts.extend(
            [
                "",
                "stale allocations of departed nodes (not live work; the "
                "coordinator replaces them at its next distribution):",
            ]
        )
        table = new_table("departed node", "subscriber: sources")
        for stale in status.stale:
            add_plain_row(
                table,
                stale.node_id or "(unregistered)",
                f"{stale.group}/{stale.subscriber}: {', '.join(stale.sources)}",
            )
        parts.append(table)
    return parts


def _rebuild_line(rebuild: RebuildProgress) -> str:
    if not rebuild.prepared:
        return f"rebuild of {rebuild.group} to v{rebuild.version}: preparing"
    return (
        f"rebuild of {rebuild.group} to v{rebuild.version}: {rebuild.progress:.1%} "
        f"of live v{rebuild.live_version}, {rebuild.behind} sequence numbers behind"
    )


_NO_LEADER = "none (no coordinator holds the leadership lock)"


def _group_parts(group: GroupStatus, *, rates: bool) -> list["RenderableType"]:
    from .tables import add_plain_row, new_table

    holders = {holding.subscriber for holding in group.holdings}
    parts: list[RenderableType] = [
        "",
        f"group {group.name}: {len(group.subscribers)} live subscribers, "
        f"{len(group.holdings)} sources held by {len(holders)}, "
        f"{len(group.moving)} moving, {group.dead_letters} dead letters"
        + (_group_rate(group) if rates else ""),
    ]
    if group.holdings:
        columns = ["node", "subscriber", "source", "checkpoint", "head", "lag"]
        table = new_table(
            *columns,
            *(["events/s"] if rates else []),
            numeric={"checkpoint", "head", "lag", "events/s"},
        )
        for holding in group.holdings:
            cells = [
                holding.node_id,
                holding.subscriber,
                holding.source,
                _number(holding.checkpoint),
                _number(holding.head),
                _number(holding.lag),
            ]
            if rates:
                cells.append(_rate(holding.events_per_second))
            add_plain_row(table, *cells)
        parts.append(table)
    if group.moving:
        table = new_table("moving source", "still claimed by", "allocated to")
        for moving in group.moving:
            add_plain_row(
                table, moving.source, moving.claimed_by or "-", moving.to or "-"
            )
        parts.append(table)
    return parts


def _ago(now: datetime, then: datetime | None) -> str:
    if then is None:
        return "- (coordinator only)"
    return f"{(now - then).total_seconds():.1f}s ago"


def _number(value: int | None) -> str:
    return "-" if value is None else str(value)


def _group_rate(group: GroupStatus) -> str:
    known = [h.events_per_second for h in group.holdings]
    if not known or None in known:
        return ""
    return f", {sum(rate or 0.0 for rate in known):.1f} events/s"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _timestamp(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
