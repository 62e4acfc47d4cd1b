"""The ``eventcomposition`` command line: thin over the containers and the runtime.

Every command maps the errors a user can act on to a one-line message on stderr and
a non-zero exit status; no traceback reaches the terminal. A command's module is
imported only when it runs (``parsers`` declares them all), so that ``--help`` and
the light commands start at once.
"""

import argparse
import importlib
import inspect
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import EventCompositionError
from .parsers import PROGRAM, build_parser, usage_problem

__all__ = ["PROGRAM", "build_parser", "entry_point", "fail", "main", "one_line"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command ``argv`` names (default: the process's); its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    problem = usage_problem(args)
    if problem is not None:
        parser.error(problem)
    try:
        command = implementation(args.func)
        return command(args)
    except EventCompositionError as error:
        return fail(one_line(str(error)), status=exit_status(error))
    except KeyboardInterrupt:
        return fail("interrupted", status=130)
    except BrokenPipeError:
        # The reader of our output went away (`... | head -5`): what it wanted
        # is written, so this is no failure. Later writes (the interpreter's
        # flush at exit) go nowhere instead of raising again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as error:
        message = database_refusal(error)
        if message is None:
            raise
        return fail(message)


def database_refusal(error: Exception) -> str | None:
    """A message for PostgreSQL's refusals that a user can act on, else None.

    psycopg is imported by the commands that talk to PostgreSQL; a command that
    did not import it cannot have raised its errors.
    """
    psycopg = sys.modules.get("psycopg")
    if psycopg is None or not isinstance(error, psycopg.Error):
        return None
    reason = first_line(str(error))
    if isinstance(error, psycopg.errors.InsufficientPrivilege):
        return (
            f"PostgreSQL refused: {reason}; the role in storage.postgres.user needs "
            "SELECT, INSERT, UPDATE and DELETE on eventcomposition's tables (grant "
            "them, or use the role that ran `eventcomposition db migrate`)"
        )
    if isinstance(error, psycopg.errors.UndefinedTable):
        return (
            f"PostgreSQL: {reason}; create the schema first with "
            "`eventcomposition db migrate`"
        )
    return None


def first_line(message: str) -> str:
    """The first non-empty line of ``message``, stripped."""
    return next((line.strip() for line in message.splitlines() if line.strip()), "")


def implementation(reference: str) -> Callable[[argparse.Namespace], int]:
    """The function ``module:function`` of this package names, run synchronously."""
    module_name, _, name = reference.partition(":")
    function: Any = getattr(importlib.import_module(f"{__name__}.{module_name}"), name)
    if not inspect.iscoroutinefunction(function):
        synchronous: Callable[[argparse.Namespace], int] = function
        return synchronous

    def run_until_complete(args: argparse.Namespace) -> int:
        import asyncio

        status: int = asyncio.run(function(args))
        return status

    return run_until_complete


def exit_status(error: EventCompositionError) -> int:
    """2 for settings that cannot be loaded (like bad arguments), else 1."""
    from ..settings import SettingsError

    return 2 if isinstance(error, SettingsError) else 1


def one_line(message: str) -> str:
    """``message`` on one line: its non-empty lines, stripped, joined by ``; ``."""
    lines = [line.strip().removeprefix("- ") for line in message.splitlines()]
    return "; ".join(line for line in lines if line).replace(":;", ":")


def fail(message: str, *, status: int = 1) -> int:
    """Print ``message`` as the program's one-line error; return ``status``."""
    print(f"{PROGRAM}: error: {message}", file=sys.stderr)
    return status


def entry_point() -> None:
    """The console script: exit with the command's status."""
    sys.exit(main())
