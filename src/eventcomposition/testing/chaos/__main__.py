"""``python -m eventcomposition.testing.chaos``: one fault-injection run.

Exits 0 when the checker finds nothing, 1 on any violation (printing the seed
that reproduces it), 2 on bad options or when the run cannot start.
"""

import argparse
import asyncio
import secrets
import sys
from collections.abc import Sequence
from pathlib import Path

from .history import FaultKind
from .network import NetworkError
from .report import render_report
from .run import RunOptions, quiet_logs, run


def _kinds(text: str) -> list[FaultKind]:
    if text == "all":
        return list(FaultKind)
    kinds = []
    for name in text.split(","):
        try:
            kinds.append(FaultKind(name.strip()))
        except ValueError:
            known = ", ".join(kind.value for kind in FaultKind)
            raise argparse.ArgumentTypeError(
                f"unknown fault {name.strip()!r}: choose from {known} (or all)"
            ) from None
    return kinds


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m eventcomposition.testing.chaos",
        description="A seeded fault-injection run of a real cluster, with a "
        "history checker. Needs root (network namespaces).",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="decides every fault (default: a random one, printed)",
    )
    parser.add_argument(
        "--minutes",
        type=float,
        default=2.0,
        help="how long faults are injected (default 2)",
    )
    parser.add_argument(
        "--faults",
        type=_kinds,
        default=list(FaultKind),
        help="comma-separated kinds, or all (default)",
    )
    parser.add_argument("--observers", type=int, default=3)
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="where node logs go (default: a new temporary folder)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = _parser().parse_args(argv)
    seed = arguments.seed if arguments.seed is not None else secrets.randbelow(10**6)
    if arguments.minutes <= 0 or arguments.observers < 2:
        print(
            "error: --minutes must be positive and --observers at least 2",
            file=sys.stderr,
        )
        return 2
    quiet_logs()
    print(
        f"chaos run: seed {seed}, {arguments.minutes:g} minutes, faults "
        f"{','.join(kind.value for kind in arguments.faults)}",
        flush=True,
    )
    options = RunOptions(
        seed=seed,
        minutes=arguments.minutes,
        kinds=arguments.faults,
        observers=arguments.observers,
        work_dir=arguments.work_dir,
    )
    try:
        outcome = asyncio.run(run(options))
    except NetworkError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted; seed {seed}", file=sys.stderr)
        return 130
    print(
        render_report(
            outcome.report,
            seed=seed,
            minutes=arguments.minutes,
            history=outcome.history,
        )
    )
    for problem in outcome.errors:
        print(f"run error: {problem}")
    print(f"node logs: {outcome.work_dir / 'nodes'}")
    return 0 if outcome.report.passed and not outcome.errors else 1


if __name__ == "__main__":
    sys.exit(main())
