"""``eventcomposition run``: one node, until SIGINT or SIGTERM."""

import argparse
import asyncio

import structlog

from ..broker import BrokerRole
from ..containers import DEFAULT_APP, application_migrations, node_for
from ..settings import load_settings
from .db import prepare_database
from .options import add_settings_arguments, configure_logging_from

logger = structlog.get_logger("eventcomposition.cli")


def add_parser(
    subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]",
) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run one node until SIGINT or SIGTERM",
        description="Build the application's node, start it and run until SIGINT "
        "or SIGTERM, then stop gracefully.",
    )
    parser.add_argument(
        "--app",
        default=DEFAULT_APP,
        help="module:attribute of the application's container class, or of a "
        f"callable returning its container (default: {DEFAULT_APP}, no consumers)",
    )
    add_settings_arguments(parser)
    parser.add_argument(
        "--role", choices=[role.value for role in BrokerRole], help="the node's role"
    )
    parser.add_argument("--node-id", help="the node's id (default: from settings)")
    parser.add_argument(
        "--migrate",
        action="store_true",
        help="apply the PostgreSQL schema before starting (idempotent)",
    )
    parser.set_defaults(func=lambda args: asyncio.run(run(args)))


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
    if args.migrate and settings.storage.type == "postgres":
        await prepare_database(
            settings.storage.postgres, application_migrations(args.app, settings)
        )
    await logger.ainfo(
        "node.starting",
        app=args.app,
        environment=settings.environment,
        storage=settings.storage.type,
    )
    await node.run_until_signalled()
    return 0
