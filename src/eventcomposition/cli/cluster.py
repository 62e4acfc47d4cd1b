"""``eventcomposition cluster status``: the live nodes and their sources, from PostgreSQL."""

import argparse
import asyncio
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

from psycopg import AsyncConnection

from ..broker import CoordinatorLeader, leading_coordinator
from ..settings import load_settings
from .db import reachable_postgres
from .options import add_settings_arguments
from .settings_show import format_table

NODES = """
    SELECT node_id, max(last_seen) AS last_seen, count(*) AS subscribers
    FROM subscribers GROUP BY node_id ORDER BY node_id
"""
# logicblocks stamps each subscription with the node that allocated it; the node
# that holds it is the one whose subscriber it belongs to.
SUBSCRIPTIONS = """
    SELECT s."group", s.id, s.node_id AS allocated_by, s.event_sources,
           r.node_id AS held_by, r.last_seen
    FROM subscriptions s LEFT JOIN subscribers r USING ("group", id)
    ORDER BY held_by NULLS LAST, s."group", s.id
"""
# How often --wait looks for a first heartbeat.
WAIT_POLL_SECONDS = 0.2


def add_parser(
    subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]",
) -> None:
    parser = subparsers.add_parser("cluster", help="inspect a PostgreSQL cluster")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    status = actions.add_parser(
        "status", help="live nodes, their last heartbeat and the sources they hold"
    )
    status.add_argument(
        "--wait",
        type=float,
        default=0,
        metavar="SECONDS",
        help="wait up to SECONDS for a first node heartbeat (nodes that are still "
        "starting have none)",
    )
    add_settings_arguments(status)
    status.set_defaults(func=lambda args: asyncio.run(show_status(args)))


async def show_status(args: argparse.Namespace) -> int:
    postgres = await reachable_postgres(args)
    where = postgres.location()
    settings = load_settings(args.env, settings_dir=args.settings_dir)
    # A node is live while the coordinator would still allocate to it.
    live_within = settings.broker.coordinator_subscriber_max_time_since_last_seen
    deadline = time.monotonic() + max(args.wait, 0)
    async with await AsyncConnection.connect(postgres.conninfo()) as connection:
        while True:
            nodes = await (await connection.execute(NODES)).fetchall()
            if _any_live(nodes, live_within) or time.monotonic() >= deadline:
                break
            await asyncio.sleep(WAIT_POLL_SECONDS)
        subscriptions = await (await connection.execute(SUBSCRIPTIONS)).fetchall()
        leader = await leading_coordinator(connection)
    print(
        render_status(
            where,
            nodes,
            subscriptions,
            leader,
            live_within=live_within,
            waited=args.wait,
        )
    )
    return 0 if args.wait <= 0 or _any_live(nodes, live_within) else 1


def _any_live(nodes: list[tuple[Any, ...]], live_within: timedelta) -> bool:
    now = datetime.now(UTC)
    return any(now - row[1] <= live_within for row in nodes)


def render_status(
    where: str,
    nodes: list[tuple[Any, ...]],
    subscriptions: list[tuple[Any, ...]],
    leader: CoordinatorLeader | None,
    *,
    live_within: timedelta,
    waited: float = 0,
) -> str:
    """The report: live nodes and the work they hold, then what departed nodes
    left behind (stale), each once."""
    allocators = {row[2] for row in subscriptions}
    now = datetime.now(UTC)
    live_nodes = {
        node_id for node_id, last_seen, _ in nodes if now - last_seen <= live_within
    }
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
        if node_id in live_nodes
    ]
    held: dict[str, list[str]] = defaultdict(list)
    stale: list[tuple[str, str]] = []
    for group, subscriber_id, _, sources, holder, _last_seen in subscriptions:
        names = ", ".join(_source_name(source) for source in sources) or "(none)"
        entry = f"{group}/{subscriber_id}: {names}"
        if holder in live_nodes:
            held[holder].append(entry)
        else:
            stale.append((holder or "(unregistered)", entry))
    lines = [f"cluster at {where}", ""]
    if node_rows:
        lines.append(
            format_table(("node", "role", "last heartbeat", "subscribers"), node_rows)
        )
    elif waited > 0:
        lines.append(f"no node sent a heartbeat within {waited:g}s")
    else:
        lines.append(
            "no live nodes: nodes that are still starting show after their first "
            "heartbeat (use --wait SECONDS to wait for one); coordinator-only nodes "
            "register none"
        )
    coordinators = sorted(allocators - {row[0] for row in nodes})
    if coordinators:
        lines.append(
            "nodes without subscribers that allocated the current subscriptions "
            f"(coordinator-only, or departed): {', '.join(coordinators)}"
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
        else "no live work allocated yet"
    )
    if stale:
        lines.append("")
        lines.append(
            "stale allocations of departed nodes (not live work; the coordinator "
            "replaces them at its next distribution):"
        )
        lines.append(format_table(("departed node", "subscriber: sources"), stale))
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
