"""``eventcomposition run``: one node, until SIGINT or SIGTERM."""

import argparse
import asyncio
import signal

import structlog

from ..broker import BrokerRole
from ..containers import resolve, shutdown
from ..logs import configure_logging
from ..schema import migrate
from ..settings import load_settings
from .app import DEFAULT_APP, container_for

logger = structlog.get_logger("eventcomposition.cli")


def add_parser(
    subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]",
) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run one node until SIGINT or SIGTERM",
        description="Build the application's container, start its runtime and run "
        "until SIGINT or SIGTERM, then stop gracefully.",
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


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--env",
        help="settings environment (default: $EVENTCOMPOSITION_ENV or development)",
    )
    parser.add_argument(
        "--settings-dir",
        help="folder of the settings files (default: $EVENTCOMPOSITION_SETTINGS_DIR "
        "or ./settings)",
    )


async def run(args: argparse.Namespace) -> int:
    node: dict[str, str] = {}
    if args.role:
        node["role"] = args.role
    if args.node_id:
        node["id"] = args.node_id
    settings = load_settings(
        args.env, settings_dir=args.settings_dir, **({"node": node} if node else {})
    )
    configure_logging(
        settings.logging.level,
        settings.logging.format,
        node_id=settings.node.id,
        role=str(settings.node.role),
    )
    container = container_for(args.app, settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        if settings.storage.type == "postgres":
            # Open the pool on its own first: resolving the runtime directly would
            # open it from several dependants at once, and a refused connection
            # would then be reported once per dependant.
            pool = await resolve(container.connection_pool)
            if args.migrate:
                await migrate(pool)
        runtime = await resolve(container.runtime)
        await runtime.start()
        await logger.ainfo(
            "node.running",
            app=args.app,
            environment=settings.environment,
            storage=settings.storage.type,
            services=sorted(runtime.service_statuses),
        )
        await stop.wait()
        await logger.ainfo("node.stopping")
    finally:
        await shutdown(container)
    await logger.ainfo("node.stopped")
    return 0
