"""The ``eventcomposition`` command line: thin over the containers and the runtime.

Every command maps the errors a user can act on to a one-line message on stderr and
a non-zero exit status; no traceback reaches the terminal.
"""

import argparse
import sys
from collections.abc import Callable, Sequence

from ..errors import EventCompositionError
from ..settings import SettingsError
from . import cluster, db, dead_letters, demo, publish, run, settings_show

PROGRAM = "eventcomposition"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
        description="Run logicblocks event-processing nodes as coordinators, "
        "observers or full nodes.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run.add_parser(commands)
    demo.add_parser(commands)
    settings_show.add_parser(commands)
    db.add_parser(commands)
    cluster.add_parser(commands)
    dead_letters.add_parser(commands)
    publish.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command: Callable[[argparse.Namespace], int] = args.func
    try:
        return command(args)
    except SettingsError as error:
        return fail(one_line(str(error)), status=2)
    except EventCompositionError as error:
        return fail(one_line(str(error)))
    except KeyboardInterrupt:
        return fail("interrupted", status=130)


def one_line(message: str) -> str:
    lines = [line.strip().removeprefix("- ") for line in message.splitlines()]
    return "; ".join(line for line in lines if line).replace(":;", ":")


def fail(message: str, *, status: int = 1) -> int:
    print(f"{PROGRAM}: error: {message}", file=sys.stderr)
    return status


def entry_point() -> None:
    sys.exit(main())
