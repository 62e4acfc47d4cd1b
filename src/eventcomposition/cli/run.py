"""``eventcomposition run``: one node, until SIGINT or SIGTERM."""

import argparse
from datetime import timedelta

import psycopg
import structlog
from psycopg import AsyncConnection

from ..containers import application_migrations, node_for
from ..settings import EventCompositionSettings, load_settings
from .db import prepare_database
from .options import configure_logging_from

logger = structlog.get_logger("eventcomposition.cli")


async def run(args: argparse.Namespace) -> int:
    node_settings: dict[str, str] = {}
    if args.role:
        node_settings["role"] = args.role
    if args.node_id:
        node_settings["id"] = args.node_id
    settings = load_settings(
        args.env,
        settings_dir=args.settings_dir,
        **({"node": node_settings} if node_settings else {}),
    )
    configure_logging_from(
        settings, node_id=settings.node.id, role=str(settings.node.role)
    )
    node = await node_for(args.app, settings)
    if args.migrate:
        await migrate_before_start(args.app, settings)
    if settings.storage.type == "postgres":
        await warn_if_node_id_in_use(settings)
    await logger.ainfo(
        "node.starting",
        app=args.app,
        environment=settings.environment,
        storage=settings.storage.type,
    )
    await node.run_until_signalled()
    return 0


async def migrate_before_start(app: str, settings: EventCompositionSettings) -> None:
    """``run --migrate``: apply the schema and the app's migrations, and say what."""
    if settings.storage.type != "postgres":
        await logger.ainfo("node.migrate-skipped", reason="storage.type is memory")
        return
    result = await prepare_database(
        settings.storage.postgres, application_migrations(app, settings)
    )
    await logger.ainfo(
        "node.migrated",
        database=settings.storage.postgres.location(),
        created=[
            *result.created_extensions,
            *result.created_tables,
            *result.created_indexes,
            *result.created_triggers,
        ],
        applied_migrations=list(result.applied_migrations),
        up_to_date=not result.changed,
    )


async def warn_if_node_id_in_use(settings: EventCompositionSettings) -> None:
    """Warn when a node with this id heartbeated recently.

    A warning, not a refusal: a node restarted at once after a crash (what a
    supervisor does) finds its previous life's heartbeat, and looks exactly like a
    second live node until one more heartbeat interval has passed.
    """
    postgres = settings.storage.postgres
    within = settings.broker.coordinator_subscriber_max_time_since_last_seen
    try:
        age = await last_heartbeat_age(postgres.conninfo(), settings.node.id, within)
    except psycopg.Error:
        # Unreachable, or the role may not read the table: the node's own start
        # retries, checks the role's privileges, and says what is wrong.
        return
    if age is not None:
        await logger.awarning(
            "node.id-in-use",
            message=f"a node with id {settings.node.id!r} heartbeated "
            f"{age.total_seconds():.1f}s ago: if it is still running, the two "
            "nodes' subscribers and claims will be mixed up; give each node its "
            "own --node-id (ignore this when restarting a node that just stopped)",
            last_heartbeat_seconds_ago=round(age.total_seconds(), 1),
        )


async def last_heartbeat_age(
    conninfo: str, node_id: str, within: timedelta
) -> timedelta | None:
    """How long ago a subscriber of ``node_id`` was last seen, if within ``within``."""
    async with await AsyncConnection.connect(conninfo) as connection:
        cursor = await connection.execute(
            "SELECT now() - max(last_seen) FROM subscribers "
            "WHERE node_id = %s AND last_seen > now() - %s",
            [node_id, within],
        )
        row = await cursor.fetchone()
    age: timedelta | None = row[0] if row else None
    return age
