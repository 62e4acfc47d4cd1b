"""10. CLI start-up: how long a command takes, from the shell's point of view.

Each run is a fresh ``eventcomposition`` process (the installed console script, as
an operator runs it), timed from start to exit: ``--help``; ``settings show`` with
the development settings; ``cluster status`` against a local database (migrated,
one node's worth of nothing: the cost is the start and the queries). Targets:
``--help`` at most 0.3 s, ``cluster status`` at most 0.7 s (issue 22).

Beside the wall time, each command's CPU time (user + system, of the process and
its children): on a busy machine the wall time grows with the load, the CPU time
much less, so it tells a slower command from a slower machine.
"""

import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from eventcomposition.settings import ENV_PREFIX
from eventcomposition.testing.processes import node_environment

from .cluster import bytecode_cached
from .common import (
    PROJECT_ROOT,
    BenchContext,
    Json,
    PostgresUnavailable,
    Spread,
    say,
    table,
)

NAME = "cli-startup"
TARGETS = {"--help": 0.3, "settings show": None, "cluster status": 0.7}


def console_script() -> list[str]:
    """The installed ``eventcomposition`` script beside this interpreter."""
    script = Path(sys.executable).with_name("eventcomposition")
    if script.exists():
        return [str(script)]
    found = shutil.which("eventcomposition")
    return [found] if found else [sys.executable, "-m", "eventcomposition"]


def children_cpu_seconds() -> float:
    """User and system CPU time of this process's finished children so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(argv: Sequence[str], env: Mapping[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds of one run of ``argv``."""
    cpu_before = children_cpu_seconds()
    started = time.perf_counter()
    completed = subprocess.run(
        list(argv),
        env=dict(env),
        cwd=PROJECT_ROOT,
        capture_output=True,
        timeout=120,
        check=False,
    )
    elapsed = time.perf_counter() - started
    cpu = children_cpu_seconds() - cpu_before
    if completed.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} failed ({completed.returncode}): "
            f"{completed.stderr.decode().strip().splitlines()[-1:]}"
        )
    return elapsed, cpu


async def run(ctx: BenchContext) -> None:
    reps = 3 if ctx.quick else 10
    say("\n== 10. CLI start-up ==")
    script = console_script()
    say(f"{reps} fresh processes per command ({' '.join(script)}), bytecode cached")
    plain = bytecode_cached(
        {k: v for k, v in os.environ.items() if not k.startswith((ENV_PREFIX, "PG"))}
    )
    commands: dict[str, tuple[list[str], Mapping[str, str]]] = {
        "--help": ([*script, "--help"], plain),
        "settings show": ([*script, "settings", "show", "--env", "development"], plain),
    }
    try:
        database = await ctx.postgres.new_database()
        commands["cluster status"] = (
            [*script, "cluster", "status"],
            bytecode_cached(node_environment(database, base=plain)),
        )
    except PostgresUnavailable as error:
        say(f"cluster status: skipped ({error})")
    results: Json = {"repetitions": reps, "commands": {}}
    rows: list[list[object]] = []
    for label, (argv, env) in commands.items():
        timed(argv, env)  # fills the bytecode cache
        runs = [timed(argv, env) for _ in range(reps)]
        spread = Spread.of(wall for wall, _ in runs)
        cpu = Spread.of(cpu for _, cpu in runs)
        target = TARGETS[label]
        met = "" if target is None else ("yes" if spread.median <= target else "NO")
        rows.append(
            [
                label,
                spread.text(".3f", " s"),
                cpu.text(".3f", " s"),
                "-" if target is None else f"{target:g} s",
                met or "-",
            ]
        )
        results["commands"][label] = {
            "seconds": spread.as_json(),
            "cpu_seconds": cpu.as_json(),
            "target": target,
        }
    say(
        table(
            "CLI start-up (min / median / max)",
            ["command", "wall time", "CPU time", "target", "median within"],
            rows,
        )
    )
    ctx.save(NAME, results)
