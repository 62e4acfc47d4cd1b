"""``python -m benchmarks [--quick] [--only NAME,...] [--results-dir DIR]``."""

import argparse
import asyncio
import importlib
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from .common import (
    DEFAULT_RESULTS_DIR,
    BenchContext,
    machine_text,
    quiet_logging,
    say,
)

type Benchmark = Callable[[BenchContext], Awaitable[None]]

# name -> module: each module has ``async def run(ctx)``. Listed in run order.
BENCHMARKS: dict[str, str] = {
    "container": "benchmarks.container_cost",
    "overhead": "benchmarks.overhead",
    "first-event": "benchmarks.first_event",
    "throughput": "benchmarks.throughput",
    "failover": "benchmarks.failover",
    "allocation": "benchmarks.allocation",
    "latency": "benchmarks.latency",
    "transactional": "benchmarks.transactional",
    "http-overhead": "benchmarks.http_overhead",
    "cli-startup": "benchmarks.cli_startup",
    "writes": "benchmarks.writes",
    "rebuild": "benchmarks.rebuild",
    "partitions": "benchmarks.partitions",
}


def parse_arguments(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmarks of eventcomposition (not tests). Each prints a table "
        "and writes its results as JSON.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run of under a minute: smaller N, fewer repetitions and "
        "process counts",
    )
    parser.add_argument(
        "--only",
        default=",".join(BENCHMARKS),
        metavar="NAME,...",
        help=f"which to run, comma-separated, of: {', '.join(BENCHMARKS)} "
        "(default: all)",
    )
    parser.add_argument(
        "--results-dir",
        type=Path,
        default=DEFAULT_RESULTS_DIR,
        help="where the JSON results go (default: benchmarks/results)",
    )
    arguments = parser.parse_args(argv)
    selected = [name.strip() for name in arguments.only.split(",") if name.strip()]
    unknown = [name for name in selected if name not in BENCHMARKS]
    if unknown or not selected:
        parser.error(
            f"unknown benchmark(s) {', '.join(unknown) or '(none given)'}; "
            f"choose from {', '.join(BENCHMARKS)}"
        )
    arguments.selected = [name for name in BENCHMARKS if name in selected]
    return arguments


def load(name: str) -> Benchmark:
    module = importlib.import_module(BENCHMARKS[name])
    benchmark: Benchmark = module.run
    return benchmark


async def run_all(ctx: BenchContext, selected: Sequence[str]) -> list[str]:
    failed: list[str] = []
    try:
        for name in selected:
            started = time.monotonic()
            try:
                await load(name)(ctx)
            except Exception as error:  # one failing benchmark must not hide the rest
                failed.append(name)
                say(f"\n!! {name} failed: {type(error).__name__}: {error}")
            say(f"({name}: {time.monotonic() - started:.1f}s)")
    finally:
        ctx.postgres.stop()
    return failed


def main(argv: Sequence[str] | None = None) -> int:
    arguments = parse_arguments(sys.argv[1:] if argv is None else argv)
    quiet_logging()
    ctx = BenchContext(quick=arguments.quick, results_dir=arguments.results_dir)
    mode = "quick" if arguments.quick else "full"
    say(f"eventcomposition benchmarks ({mode}): {', '.join(arguments.selected)}")
    started = time.monotonic()
    failed = asyncio.run(run_all(ctx, arguments.selected))
    say("")
    say(machine_text(ctx.machine()))
    say(
        f"{mode} run of {', '.join(arguments.selected)} took "
        f"{time.monotonic() - started:.1f}s"
        + (f"; FAILED: {', '.join(failed)}" if failed else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
