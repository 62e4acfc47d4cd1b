"""``eventcomposition cluster status``: the live nodes, each group's holdings with
their lag, the sources between holders and the dead letters, from PostgreSQL.

Everything is read from the database: which sources are moving is derived from the
subscriptions and the consumers' claims, as the leading coordinator's memory is out
of reach.
"""

import argparse
import asyncio
import os
import sys
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from logicblocks.event.types import EventSourceIdentifier
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from ..broker.allocation import SubscriberRequest, target_requests
from ..broker.leader import CoordinatorLeader, leading_coordinator
from ..consumers.partitions import source_identifier
from ..consumers.source_keys import (
    STATE_STREAM,
    position_in_state,
    source_key,
    state_category_name,
)
from ..lag import PostgresEventCounter, PostgresHeadReader, SourceLag, SourceSpan
from ..projections.catalog import ProjectionCatalog
from ..projections.versions import RebuildProgress, building_of, checkpoint_group
from ..settings import PostgresSettings, load_settings
from .cluster_report import (
    ClusterStatus,
    GroupStatus,
    HoldingStatus,
    MovingStatus,
    NodeStatus,
    StaleAllocation,
    SubscriberStatus,
    render_status,
    status_json,
)
from .db import reachable_postgres
from .parsers import WATCH_INTERVAL

SUBSCRIBERS = """
    SELECT "group", id, node_id, subscription_requests, last_seen
    FROM subscribers ORDER BY node_id, "group", id
"""
SUBSCRIPTIONS = """
    SELECT "group", id, event_sources FROM subscriptions ORDER BY "group", id
"""
CHECKPOINTS = 'SELECT "group", source, sequence_number FROM consumer_checkpoints'
UNRELEASED_CLAIMS = """
    SELECT "group", source, holder_node, holder_subscriber
    FROM consumer_claims WHERE NOT released
"""
DEAD_LETTERS = 'SELECT "group", count(*) FROM consumer_dead_letters GROUP BY "group"'
# The latest saved state of each per-event state category (one index probe each).
SAVED_STATES = """
    SELECT s.category,
           (SELECT e.payload FROM events e
            WHERE e.category = s.category AND e.stream = %(stream)s
            ORDER BY e.sequence_number DESC LIMIT 1)
    FROM unnest(%(categories)s::text[]) AS s(category)
"""
HAS_VERSIONS = "SELECT to_regclass('projection_versions') IS NOT NULL"
LIVE_VERSIONS = """
    SELECT "group", version FROM projection_versions WHERE state = 'live'
"""
# How often --wait looks for a first heartbeat.
WAIT_POLL_SECONDS = 0.2

type Pool = AsyncConnectionPool[AsyncConnection[Any]]
type Row = tuple[Any, ...]


def status_command(args: argparse.Namespace) -> int:
    """``cluster status``: once, or with ``--watch`` until Ctrl-C."""
    if not args.watch:
        return asyncio.run(show_status(args))
    try:
        return asyncio.run(watch(args))
    except KeyboardInterrupt:
        # Ctrl-C is how a watch ends.
        return 0
    except BrokenPipeError:
        # The reader went away (`| head`): nothing more to say to it.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


async def watch(args: argparse.Namespace) -> int:
    """Show the status every ``--interval`` seconds until interrupted."""
    # Imported here: one-shot `cluster status` needs none of rich's live display.
    from .cluster_watch import watch_status

    postgres, live_within = await _cluster_settings(args)
    async with AsyncConnectionPool[AsyncConnection[Any]](
        postgres.conninfo(), min_size=1, max_size=1, open=False
    ) as pool:

        async def read(since: ClusterStatus | None) -> ClusterStatus:
            return await read_status(
                pool, postgres.location(), live_within, since=since
            )

        await watch_status(
            read, interval=args.interval or WATCH_INTERVAL, output=sys.stdout
        )
    return 0


async def _cluster_settings(
    args: argparse.Namespace,
) -> tuple[PostgresSettings, timedelta]:
    """The database, once it answers, and how recently a live node was seen."""
    settings = load_settings(args.env, settings_dir=args.settings_dir)
    postgres = await reachable_postgres(args, settings)
    # A node is live while the coordinator would still allocate to it.
    return postgres, settings.broker.coordinator_subscriber_max_time_since_last_seen


async def show_status(args: argparse.Namespace) -> int:
    postgres, live_within = await _cluster_settings(args)
    deadline = time.monotonic() + max(args.wait, 0)
    async with AsyncConnectionPool[AsyncConnection[Any]](
        postgres.conninfo(), min_size=1, max_size=1, open=False
    ) as pool:
        while True:
            status = await read_status(pool, postgres.location(), live_within)
            found = any(node.last_heartbeat is not None for node in status.nodes)
            if found or time.monotonic() >= deadline:
                break
            await asyncio.sleep(WAIT_POLL_SECONDS)
    print(status_json(status) if args.json else render_status(status, waited=args.wait))
    return 0 if args.wait <= 0 or found else 1


@dataclass(frozen=True)
class _Subscriber:
    group: str
    id: str
    node_id: str
    requests: tuple[EventSourceIdentifier, ...]
    last_seen: datetime


async def read_status(
    pool: Pool,
    where: str,
    live_within: timedelta,
    *,
    since: ClusterStatus | None = None,
) -> ClusterStatus:
    """The cluster as the database shows it now.

    With ``since`` (an earlier reading), each holding also has the events processed
    since then per second: the events of its source between the two checkpoints,
    counted in the database.
    """
    async with pool.connection() as connection:
        subscriber_rows = await _rows(connection, SUBSCRIBERS)
        subscriptions = await _rows(connection, SUBSCRIPTIONS)
        checkpoints = {
            (group, source): position
            for group, source, position in await _rows(connection, CHECKPOINTS)
        }
        claims = {
            (group, source): f"{node}/{subscriber}"
            for group, source, node, subscriber in await _rows(
                connection, UNRELEASED_CLAIMS
            )
        }
        dead_letters: dict[str, int] = {
            group: count for group, count in await _rows(connection, DEAD_LETTERS)
        }
        leader = await leading_coordinator(connection)
        versioned = (await _rows(connection, HAS_VERSIONS))[0][0]
        live_versions: dict[str, int] = (
            dict(await _rows(connection, LIVE_VERSIONS)) if versioned else {}
        )
    # A versioned projection's group shows its live version's work.
    for group, version in live_versions.items():
        live_group = checkpoint_group(group, int(version))
        for table in (checkpoints, claims):
            for (of, source), value in list(table.items()):
                if of == live_group:
                    table[(group, source)] = value
        if live_group in dead_letters:
            dead_letters[group] = dead_letters.pop(live_group)
    rebuilds = await _rebuilds(pool) if versioned else []
    now = datetime.now(UTC)
    registered = {
        (group, id_): _Subscriber(
            group, id_, node_id, tuple(map(_identifier, requests)), last_seen
        )
        for group, id_, node_id, requests, last_seen in subscriber_rows
    }
    live = {
        key: subscriber
        for key, subscriber in registered.items()
        if now - subscriber.last_seen <= live_within
    }
    held: dict[str, dict[str, tuple[EventSourceIdentifier, ...]]] = defaultdict(dict)
    stale = []
    for group, id_, sources in subscriptions:
        identifiers = tuple(map(_identifier, sources))
        if (group, id_) in live:
            held[group][id_] = identifiers
        else:
            departed = registered.get((group, id_))
            stale.append(
                StaleAllocation(
                    departed.node_id if departed else None,
                    group,
                    id_,
                    [source_key(source) for source in identifiers],
                )
            )
    held_sources = {
        source
        for subscriptions_of_group in held.values()
        for sources in subscriptions_of_group.values()
        for source in sources
    }
    heads = await PostgresHeadReader(pool).heads(sorted(held_sources, key=repr))
    checkpoints.update(await _saved_positions(pool, held, checkpoints))
    groups = [
        _group(
            group,
            [s for s in live.values() if s.group == group],
            held[group],
            checkpoints,
            heads,
            claims,
            dead_letters.get(group, 0),
        )
        for group in sorted({s.group for s in live.values()} | dead_letters.keys())
    ]
    if since is not None:
        by_key = {source_key(source): source for source in held_sources}
        groups = await _with_rates(pool, groups, since, now, by_key)
    return ClusterStatus(
        where=where,
        at=now,
        nodes=_nodes(live.values(), leader),
        leader=_leader_name(leader),
        groups=groups,
        stale=stale,
        rebuilds=rebuilds,
    )


async def _saved_positions(
    pool: Pool,
    held: Mapping[str, Mapping[str, tuple[EventSourceIdentifier, ...]]],
    checkpoints: Mapping[tuple[str, str], int],
) -> dict[tuple[str, str], int]:
    """Positions of held sources without a transactional checkpoint, as per-event
    subscription consumers save them (logicblocks' consumer state store: the latest
    state event of each source's state category), in one query."""
    wanted = {
        state_category_name(group, source): (group, source_key(source))
        for group, subscriptions_of_group in held.items()
        for sources in subscriptions_of_group.values()
        for source in sources
        if (group, source_key(source)) not in checkpoints
    }
    if not wanted:
        return {}
    async with pool.connection() as connection:
        rows = await _rows(
            connection,
            SAVED_STATES,
            {"categories": list(wanted), "stream": STATE_STREAM},
        )
    found: dict[tuple[str, str], int] = {}
    for category, payload in rows:
        position = position_in_state(payload)
        if position is not None:
            found[wanted[category]] = position
    return found


async def _rebuilds(pool: Pool) -> list[RebuildProgress]:
    catalog = ProjectionCatalog(pool)
    found = []
    for group, versions in (await catalog.all_versions()).items():
        if building_of(versions) is not None:
            progress = await catalog.progress(group)
            if progress is not None:
                found.append(progress)
    return found


def _group(
    group: str,
    subscribers: Sequence[_Subscriber],
    held: dict[str, tuple[EventSourceIdentifier, ...]],
    checkpoints: dict[tuple[str, str], int],
    heads: Mapping[EventSourceIdentifier, int | None],
    claims: dict[tuple[str, str], str],
    dead_letters: int,
) -> GroupStatus:
    node_of = {subscriber.id: subscriber.node_id for subscriber in subscribers}
    holdings = []
    holder_of: dict[str, str] = {}
    for subscriber, sources in sorted(held.items()):
        for source in sources:
            key = source_key(source)
            holder_of[key] = f"{node_of[subscriber]}/{subscriber}"
            lag = SourceLag(
                group,
                source,
                checkpoints.get((group, key)),
                heads.get(source),
                head_known=source in heads,
            )
            holdings.append(
                HoldingStatus(
                    node_of[subscriber],
                    subscriber,
                    key,
                    lag.checkpoint,
                    lag.head,
                    lag.lag,
                )
            )
    requested, _ = target_requests(
        SubscriberRequest(subscriber.id, subscriber.requests)
        for subscriber in subscribers
    )
    moving = []
    for key in sorted(source_key(source) for source in requested):
        claimed_by = claims.get((group, key))
        holder = holder_of.get(key)
        if holder is None or (claimed_by is not None and claimed_by != holder):
            moving.append(MovingStatus(key, claimed_by, holder))
    return GroupStatus(
        name=group,
        subscribers=[
            SubscriberStatus(s.id, s.node_id, s.last_seen, len(s.requests))
            for s in subscribers
        ],
        holdings=holdings,
        moving=moving,
        dead_letters=dead_letters,
    )


async def _with_rates(
    pool: Pool,
    groups: Sequence[GroupStatus],
    since: ClusterStatus,
    now: datetime,
    identifiers: Mapping[str, EventSourceIdentifier],
) -> list[GroupStatus]:
    elapsed = (now - since.at).total_seconds()
    before = {
        (group.name, holding.source): holding.checkpoint
        for group in since.groups
        for holding in group.holdings
    }
    counted: list[tuple[str, str]] = []
    spans: list[SourceSpan] = []
    for group in groups:
        for holding in group.holdings:
            key = (group.name, holding.source)
            if key in before and holding.checkpoint is not None:
                counted.append(key)
                spans.append(
                    SourceSpan(
                        identifiers[holding.source], before[key], holding.checkpoint
                    )
                )
    counts = dict(
        zip(counted, await PostgresEventCounter(pool).counts(spans), strict=True)
    )

    def rate(group: str, holding: HoldingStatus) -> float | None:
        key = (group, holding.source)
        if key not in before or elapsed <= 0:
            return None
        if holding.checkpoint is None:
            return 0.0
        count = counts.get(key)
        return None if count is None else count / elapsed

    return [
        replace(
            group,
            holdings=[
                replace(holding, events_per_second=rate(group.name, holding))
                for holding in group.holdings
            ],
        )
        for group in groups
    ]


def _nodes(
    live: Iterable[_Subscriber], leader: CoordinatorLeader | None
) -> list[NodeStatus]:
    last_seen: dict[str, datetime] = {}
    counts: dict[str, int] = defaultdict(int)
    for subscriber in live:
        counts[subscriber.node_id] += 1
        last_seen[subscriber.node_id] = max(
            subscriber.last_seen,
            last_seen.get(subscriber.node_id, subscriber.last_seen),
        )
    leading = leader.node_id if leader is not None else None
    nodes = [
        NodeStatus(
            node_id,
            "full, leading coordinator" if node_id == leading else "observer or full",
            last_seen[node_id],
            counts[node_id],
        )
        for node_id in sorted(last_seen)
    ]
    if leading is not None and leading not in last_seen:
        nodes.append(NodeStatus(leading, "coordinator, leading", None, 0))
    return nodes


def _leader_name(leader: CoordinatorLeader | None) -> str | None:
    if leader is None:
        return None
    return leader.node_id or f"unnamed (server process {leader.pid})"


def _identifier(serialised: Any) -> EventSourceIdentifier:
    return source_identifier(serialised)


async def _rows(
    connection: AsyncConnection[Any],
    query: str,
    parameters: Mapping[str, Any] | None = None,
) -> list[Row]:
    return await (await connection.execute(query, parameters)).fetchall()
