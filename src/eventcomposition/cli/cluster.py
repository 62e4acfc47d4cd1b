"""``eventcomposition cluster status``: the live nodes and their sources, from PostgreSQL."""

import argparse
import asyncio
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

from psycopg import AsyncConnection

from ..broker import CoordinatorLeader, leading_coordinator
from .db import reachable_postgres
from .run import add_settings_arguments
from .settings_show import format_table

NODES = """
    SELECT node_id, max(last_seen) AS last_seen, count(*) AS subscribers
    FROM subscribers GROUP BY node_id ORDER BY node_id
"""
# logicblocks stamps each subscription with the node that allocated it; the node
# that holds it is the one whose subscriber it belongs to.
SUBSCRIPTIONS = """
    SELECT s."group", s.id, s.node_id AS allocated_by, s.event_sources,
           r.node_id AS held_by
    FROM subscriptions s LEFT JOIN subscribers r USING ("group", id)
    ORDER BY held_by NULLS LAST, s."group", s.id
"""


def add_parser(
    subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]",
) -> None:
    parser = subparsers.add_parser("cluster", help="inspect a PostgreSQL cluster")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    status = actions.add_parser(
        "status", help="live nodes, their last heartbeat and the sources they hold"
    )
    add_settings_arguments(status)
    status.set_defaults(func=lambda args: asyncio.run(show_status(args)))


async def show_status(args: argparse.Namespace) -> int:
    postgres, where = await reachable_postgres(args)
    async with await AsyncConnection.connect(postgres.conninfo()) as connection:
        nodes = await (await connection.execute(NODES)).fetchall()
        subscriptions = await (await connection.execute(SUBSCRIPTIONS)).fetchall()
        leader = await leading_coordinator(connection)
    print(render_status(where, nodes, subscriptions, leader))
    return 0


def render_status(
    where: str,
    nodes: list[tuple[Any, ...]],
    subscriptions: list[tuple[Any, ...]],
    leader: CoordinatorLeader | None,
) -> str:
    allocators = {row[2] for row in subscriptions}
    now = datetime.now(UTC)
    node_rows = [
        (
            str(node_id),
            "observer, allocated the current subscriptions (full)"
            if node_id in allocators
            else "observer or full",
            f"{(now - last_seen).total_seconds():.1f}s ago",
            str(count),
        )
        for node_id, last_seen, count in nodes
    ]
    held: dict[str, list[str]] = defaultdict(list)
    for group, subscriber_id, _, sources, holder in subscriptions:
        names = ", ".join(_source_name(source) for source in sources) or "(none)"
        held[holder or "(no live subscriber)"].append(
            f"{group}/{subscriber_id}: {names}"
        )
    lines = [f"cluster at {where}", ""]
    lines.append(
        format_table(("node", "role", "last heartbeat", "subscribers"), node_rows)
        if node_rows
        else "no live nodes with subscribers (coordinator-only nodes register none)"
    )
    coordinators = sorted(allocators - {row[0] for row in nodes})
    if coordinators:
        lines.append(
            f"coordinator-only nodes that allocated work: {', '.join(coordinators)}"
        )
    lines.append(f"leading coordinator: {_leader_name(leader)}")
    lines.append("")
    lines.append(
        format_table(
            ("node", "subscriber: sources"),
            [
                (node, entry)
                for node, entries in sorted(held.items())
                for entry in entries
            ],
        )
        if held
        else "no subscriptions allocated yet"
    )
    return "\n".join(lines)


def _leader_name(leader: CoordinatorLeader | None) -> str:
    if leader is None:
        return "none (no coordinator holds the leadership lock)"
    return leader.node_id or f"unnamed (server process {leader.pid})"


def _source_name(source: Any) -> str:
    if isinstance(source, dict):
        if "stream" in source:
            return f"{source.get('category')}/{source['stream']}"
        if "category" in source:
            return str(source["category"])
    return str(source)
