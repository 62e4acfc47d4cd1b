"""``eventcomposition run``: one node, until SIGINT or SIGTERM."""

import argparse

import structlog

from ..containers import application_migrations, node_for
from ..settings import load_settings
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
