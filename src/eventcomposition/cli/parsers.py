"""The command line's parsers: declarations only, so that ``--help`` imports nothing heavy.

Each command names its implementation as ``"module:function"`` (a module of this
package, a function taking the parsed arguments and returning the exit status,
sync or async); ``eventcomposition.cli.main`` imports it only when the command runs.
"""

import argparse
from typing import Any

from .options import (
    add_settings_arguments,
    non_negative_int,
    positive_float,
    positive_int,
)

PROGRAM = "eventcomposition"
DEFAULT_APP = "eventcomposition.containers:EventRuntimeContainer"
# BrokerRole's values (eventcomposition.broker imports the library's broker).
ROLES = ["coordinator", "observer", "full"]

DEFAULT_EVENTS = 2000
DEFAULT_OBSERVERS = 2
DEFAULT_MALFORMED = 3
DEFAULT_TIMEOUT = 60.0
# Seconds between the readings of `cluster status --watch`, by default and at least.
WATCH_INTERVAL = 1.0
MIN_INTERVAL = 0.1


class Parser(argparse.ArgumentParser):
    """An argument parser that refuses abbreviated options (``--rol`` for ``--role``).

    Sub-command parsers are of the parent's class, so every command refuses them.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command."""
    parser: argparse.ArgumentParser = Parser(
        prog=PROGRAM,
        description="Run logicblocks event-processing nodes as coordinators, "
        "observers or full nodes.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_new_parser(commands)
    add_run_parser(commands)
    add_demo_parser(commands)
    add_settings_show_parser(commands)
    add_db_parser(commands)
    add_cluster_parser(commands)
    add_dead_letters_parser(commands)
    add_projections_parser(commands)
    add_publish_parser(commands)
    return parser


def add_new_parser(
    subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]",
) -> None:
    parser = subparsers.add_parser(
        "new",
        help="create a ready application in a new folder",
        description="Write a ready application into PATH (a new or empty folder): "
        "its pyproject.toml, a container with one consumer, settings profiles, "
        "migrations, tests and a README with the commands that run them.",
    )
    parser.add_argument("path", metavar="PATH", help="the folder to create")
    parser.add_argument(
        "--name",
        help="the application's distribution name (default: the folder's name)",
    )
    parser.set_defaults(func="new:create")


def add_run_parser(
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
    parser.add_argument("--role", choices=ROLES, help="the node's role")
    parser.add_argument("--node-id", help="the node's id (default: from settings)")
    parser.add_argument(
        "--migrate",
        action="store_true",
        help="apply the PostgreSQL schema before starting (idempotent)",
    )
    parser.set_defaults(func="run:run")


def add_demo_parser(
    subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]",
) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run a coordinator and observers of the sample app in one process",
        description="Start one coordinator-only and K observer-only nodes of the "
        "sample application (orders projected into totals per customer) in one "
        "process, publish N orders, show the progress, then what each node "
        "processed and whether the projection is correct. Exits 1 if it is not.",
    )
    add_demo_arguments(parser)
    parser.set_defaults(func="demo:run")


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--events",
        type=positive_int,
        default=DEFAULT_EVENTS,
        metavar="N",
        help=f"orders to publish, malformed ones included (default: {DEFAULT_EVENTS})",
    )
    parser.add_argument(
        "--observers",
        type=positive_int,
        default=DEFAULT_OBSERVERS,
        metavar="K",
        help=f"observer-only nodes (default: {DEFAULT_OBSERVERS})",
    )
    parser.add_argument(
        "--storage",
        choices=["memory", "postgres"],
        default="memory",
        help="where events, coordination and projections live (default: memory; "
        "postgres uses the configured database)",
    )
    parser.add_argument(
        "--malformed",
        type=non_negative_int,
        default=None,
        metavar="M",
        help="how many of the orders to publish malformed, to show that they are "
        f"logged and skipped (default: {DEFAULT_MALFORMED}, at most N)",
    )
    parser.add_argument(
        "--timeout",
        type=positive_float,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help="how long to wait for the nodes to process everything "
        f"(default: {DEFAULT_TIMEOUT:g})",
    )
    add_settings_arguments(parser)


def add_settings_show_parser(
    subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]",
) -> None:
    parser = subparsers.add_parser("settings", help="inspect the effective settings")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    show = actions.add_parser(
        "show",
        help="print the settings files used, every setting, its value (secrets "
        "masked) and its source",
    )
    add_settings_arguments(show)
    show.set_defaults(func="settings_show:show_settings")


def add_db_parser(
    subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]",
) -> None:
    parser = subparsers.add_parser("db", help="manage the PostgreSQL schema")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    migrate_parser = actions.add_parser(
        "migrate",
        help="create the tables, indexes and extension the nodes need (idempotent)",
    )
    migrate_parser.add_argument(
        "--app",
        help="module:attribute of the application's container: its 'migrations' "
        "are applied after the eventcomposition schema",
    )
    add_settings_arguments(migrate_parser)
    migrate_parser.set_defaults(func="db:apply_schema")


def add_cluster_parser(
    subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]",
) -> None:
    parser = subparsers.add_parser("cluster", help="inspect a PostgreSQL cluster")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    status = actions.add_parser(
        "status",
        help="live nodes, their last heartbeat, each group's holdings with their "
        "lag, the sources moving between nodes and the dead letters",
    )
    status.add_argument(
        "--wait",
        type=float,
        default=0,
        metavar="SECONDS",
        help="wait up to SECONDS for a first node heartbeat (nodes that are still "
        "starting have none)",
    )
    status.add_argument(
        "--json",
        action="store_true",
        help="print one JSON document instead of tables, for scripts",
    )
    status.add_argument(
        "--watch",
        action="store_true",
        help="redraw the status in place every second (or --interval) with each "
        "holding's events/s, until Ctrl-C; when stdout is not a terminal, print "
        "each reading after the last",
    )
    status.add_argument(
        "--interval",
        type=watch_interval,
        metavar="SECONDS",
        help=f"seconds between readings of --watch (default {WATCH_INTERVAL:g})",
    )
    add_settings_arguments(status)
    status.set_defaults(func="cluster:status_command")


def watch_interval(value: str) -> float:
    """``--interval``: a number of seconds of at least ``MIN_INTERVAL``."""
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0
    if not MIN_INTERVAL <= seconds < float("inf"):
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a number of seconds of at least {MIN_INTERVAL:g} "
            "(e.g. 1 or 0.5)"
        )
    return seconds


def usage_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with a combination of options argparse cannot check alone."""
    if getattr(args, "watch", False) and (args.json or args.wait):
        return (
            "--watch shows the status until Ctrl-C: it takes neither --json nor "
            "--wait (nodes appear as they start)"
        )
    # `cluster status` (the projections commands' --interval goes with --follow).
    if getattr(args, "interval", None) is not None and not getattr(args, "watch", True):
        return "--interval applies to --watch only: add --watch"
    return None


def add_dead_letters_parser(
    subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]",
) -> None:
    parser = subparsers.add_parser(
        "dead-letters", help="list or retry events parked by transactional consumers"
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser(
        "list", help="show the parked events, and those waiting behind them"
    )
    add_settings_arguments(listing)
    listing.add_argument("--group", help="only this subscriber group's")
    listing.set_defaults(func="dead_letters:list_dead_letters")

    retry = actions.add_parser(
        "retry",
        help="deliver the parked events again to their group's processor, each "
        "stream's in order, removing each one applied",
    )
    retry.add_argument(
        "--app",
        default=DEFAULT_APP,
        help="module:attribute of the application's container, whose consumers "
        "declare the groups' processors",
    )
    add_settings_arguments(retry)
    retry.add_argument("--group", help="only this subscriber group's")
    retry.set_defaults(func="dead_letters_retry:retry_parked")


def add_projections_parser(
    subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]",
) -> None:
    parser = subparsers.add_parser(
        "projections", help="list, rebuild, swap, cancel, drop or reset projections"
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    listing = actions.add_parser("list", help="every versioned projection's versions")
    add_settings_arguments(listing)
    listing.set_defaults(func="projections:list_command")

    rebuild = actions.add_parser(
        "rebuild",
        help="build the next version of GROUP's projection beside the live one; "
        "the nodes swap it in once it has caught up",
    )
    rebuild.add_argument("group", metavar="GROUP")
    _follow_arguments(rebuild, "follow the rebuild until it is swapped in")
    rebuild.set_defaults(func="projections:rebuild_command")

    status = actions.add_parser("status", help="GROUP's versions and its rebuild")
    status.add_argument("group", metavar="GROUP")
    _follow_arguments(status, "follow the running rebuild until it ends")
    status.set_defaults(func="projections:status_command")

    cancel = actions.add_parser(
        "cancel", help="stop GROUP's running rebuild and drop what it built"
    )
    cancel.add_argument("group", metavar="GROUP")
    add_settings_arguments(cancel)
    cancel.set_defaults(func="projections:cancel_command")

    drop = actions.add_parser("drop", help="drop a retired version of GROUP")
    drop.add_argument("group", metavar="GROUP")
    drop.add_argument("--version", type=positive_int, required=True, metavar="V")
    add_settings_arguments(drop)
    drop.set_defaults(func="projections:drop_command")

    reset = actions.add_parser(
        "reset",
        help="empty GROUP's live version in place and process it again from the "
        "first event (readers see it empty, then filling: for small or "
        "development projections)",
    )
    reset.add_argument("group", metavar="GROUP")
    reset.add_argument("--yes", action="store_true", help="do not ask to confirm")
    add_settings_arguments(reset)
    reset.set_defaults(func="projections:reset_command")


def _follow_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--follow", action="store_true", help=what)
    parser.add_argument(
        "--interval",
        type=positive_float,
        default=1.0,
        metavar="SECONDS",
        help="how often to look while following (default 1)",
    )
    add_settings_arguments(parser)


def add_publish_parser(
    subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]",
) -> None:
    parser = subparsers.add_parser(
        "publish",
        help="append events to streams in PostgreSQL",
        description="Append one event (--category, --stream, --name, --payload), "
        "the events of a JSON Lines file or of standard input (--file; one object "
        "a line with category, stream, name and payload), or the sample "
        "application's orders (--demo-orders). Every event is checked before any "
        "is written; the events of one category are written in one transaction "
        "(a file of several categories: one per category, in order of first "
        "appearance).",
    )
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--name", help="the name of one event")
    what.add_argument(
        "--file", help="a JSON Lines file of events, or - for standard input"
    )
    what.add_argument(
        "--demo-orders",
        type=int,
        metavar="N",
        help="N orders of the sample application, in its category",
    )
    parser.add_argument("--category", help="the category of the one event")
    parser.add_argument("--stream", help="the stream of the one event")
    parser.add_argument(
        "--payload", default="{}", help="the JSON object payload (default: {})"
    )
    parser.add_argument(
        "--demo-run-id",
        default="",
        help="with --demo-orders: the run id scoping the sample's names "
        "(default: none, the names eventcomposition.demo:DemoContainer uses)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="with --demo-orders: the orders' seed"
    )
    add_settings_arguments(parser)
    parser.set_defaults(func="publish:publish")
