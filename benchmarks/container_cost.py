"""5. Cost of the container: import time, settings, build and runtime resolution.

Each repetition runs in a fresh interpreter (``python -c``), so imports are cold
as a node's start sees them (the OS file cache is warm after the first). It times:

- ``import eventcomposition``, and for comparison ``import logicblocks.event.store,
  logicblocks.event.processing`` (what any logicblocks node imports) and a bare
  interpreter start;
- in one interpreter: importing what a node needs (``eventcomposition.demo``),
  ``load_settings``, ``build_container(DemoContainer, settings)`` and
  ``await resolve(container.runtime)``: in memory, and on PostgreSQL (where
  resolving opens the connection pool).
"""

import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

from eventcomposition.settings import ENV_PREFIX
from eventcomposition.testing import ConnectionInfo
from eventcomposition.testing.containers import postgres_overrides

from .cluster import bytecode_cached
from .common import (
    PROJECT_ROOT,
    SETTINGS_DIR,
    BenchContext,
    Json,
    PostgresUnavailable,
    Spread,
    say,
    table,
)

NAME = "container"

IMPORT_EVENTCOMPOSITION = """
import json, time
t = time.perf_counter()
import eventcomposition
print(json.dumps({"import": time.perf_counter() - t}))
"""

IMPORT_LOGICBLOCKS = """
import json, time
t = time.perf_counter()
import logicblocks.event.store, logicblocks.event.processing
print(json.dumps({"import": time.perf_counter() - t}))
"""

BARE = "pass"

BUILD_AND_RESOLVE = """
import asyncio, json, sys, time
t0 = time.perf_counter()
from eventcomposition.containers import build_container, resolve, shutdown
from eventcomposition.containers.demo import DemoContainer
from eventcomposition.logs import configure_logging
from eventcomposition.settings import load_settings
t1 = time.perf_counter()
configure_logging("WARNING")
overrides = json.loads(sys.argv[1])
settings = load_settings("development", settings_dir=sys.argv[2], **overrides)
t2 = time.perf_counter()
container = build_container(DemoContainer, settings)
t3 = time.perf_counter()

async def main():
    t = time.perf_counter()
    runtime = await resolve(container.runtime)
    resolved = time.perf_counter() - t
    assert runtime.node_id
    t = time.perf_counter()
    await shutdown(container)
    return resolved, time.perf_counter() - t

resolved, closed = asyncio.run(main())
print(json.dumps({
    "imports": t1 - t0,
    "load_settings": t2 - t1,
    "build_container": t3 - t2,
    "resolve_runtime": resolved,
    "build_and_resolve": (t3 - t2) + resolved,
    "shutdown": closed,
}))
"""


def fresh_python(
    code: str, *args: str, bytecode: bool = True
) -> tuple[float, dict[str, float]]:
    """Run ``code`` in a new interpreter; its wall time and the JSON it printed.

    With ``bytecode`` the interpreter reads (and writes) compiled modules in a
    cache outside the work tree; without, it compiles every module it imports,
    as every start does where PYTHONDONTWRITEBYTECODE is set and nothing was
    compiled (as on this machine: uv installs no bytecode by default).
    """
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith((ENV_PREFIX, "PG"))
    }
    if bytecode:
        env = bytecode_cached(env)
    else:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env["PYTHONPYCACHEPREFIX"] = tempfile.mkdtemp(prefix="bench-no-pycache-")
    started = time.perf_counter()
    completed = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=PROJECT_ROOT,
        env=env,
    )
    wall = time.perf_counter() - started
    if completed.returncode != 0:
        raise RuntimeError(
            f"a benchmark interpreter failed ({completed.returncode}): "
            f"{completed.stderr.strip().splitlines()[-1:]}"
        )
    lines = completed.stdout.strip().splitlines()
    values: dict[str, float] = json.loads(lines[-1]) if lines else {}
    return wall, values


def postgres_overrides_json(database: ConnectionInfo) -> str:
    return json.dumps(postgres_overrides(database))


async def run(ctx: BenchContext) -> None:
    reps = 2 if ctx.quick else 10
    say("\n== 5. Cost of the container: imports, build and resolve ==")
    say(
        f"{reps} fresh interpreters per row ({sys.executable}), with a bytecode "
        "cache unless said otherwise; the app is eventcomposition.containers.demo:DemoContainer "
        "with the development settings."
    )
    # One unmeasured start fills the bytecode cache.
    fresh_python(BUILD_AND_RESOLVE, json.dumps({}), str(SETTINGS_DIR))
    fresh_python(IMPORT_LOGICBLOCKS)
    cases: list[tuple[str, str, tuple[str, ...], str]] = [
        ("bare interpreter start (python -c pass)", BARE, (), "wall"),
        (
            "import logicblocks.event.store + .processing",
            IMPORT_LOGICBLOCKS,
            (),
            "import",
        ),
        ("import eventcomposition", IMPORT_EVENTCOMPOSITION, (), "import"),
    ]
    build_args: dict[str, tuple[str, ...]] = {
        "memory": (json.dumps({}), str(SETTINGS_DIR)),
    }
    try:
        database = await ctx.postgres.new_database()
        build_args["postgres"] = (postgres_overrides_json(database), str(SETTINGS_DIR))
    except PostgresUnavailable as error:
        say(f"postgres: skipped ({error})")
    results: Json = {"repetitions": reps, "rows": {}}
    rows: list[list[object]] = []
    if not ctx.quick:
        cases.append(
            (
                "import eventcomposition, no bytecode cache (compiles every module)",
                IMPORT_EVENTCOMPOSITION,
                (),
                "import",
            )
        )
    for label, code, args, key in cases:
        bytecode = "no bytecode" not in label
        samples = [fresh_python(code, *args, bytecode=bytecode) for _ in range(reps)]
        values = [wall if key == "wall" else parts[key] for wall, parts in samples]
        spread = Spread.of(v * 1000 for v in values)
        rows.append([label, spread.text(".1f", " ms")])
        results["rows"][label] = {"milliseconds": spread.as_json()}
    steps = [
        "imports",
        "load_settings",
        "build_container",
        "resolve_runtime",
        "build_and_resolve",
        "shutdown",
    ]
    for kind, args in build_args.items():
        samples = [fresh_python(BUILD_AND_RESOLVE, *args) for _ in range(reps)]
        breakdown: dict[str, Any] = {}
        for step in steps:
            spread = Spread.of(parts[step] * 1000 for _, parts in samples)
            breakdown[step] = spread.as_json()
            label = {
                "imports": "import eventcomposition.containers + .demo + .settings",
                "load_settings": "load_settings('development')",
                "build_container": "build_container(DemoContainer, settings)",
                "resolve_runtime": "await resolve(container.runtime)",
                "build_and_resolve": "build + resolve (the container's own cost)",
                "shutdown": "shutdown(container)",
            }[step]
            rows.append([f"{kind}: {label}", spread.text(".1f", " ms")])
        whole = Spread.of(wall * 1000 for wall, _ in samples)
        rows.append(
            [f"{kind}: whole interpreter (start to exit)", whole.text(".1f", " ms")]
        )
        results["rows"][f"build and resolve, {kind}"] = {
            "milliseconds": breakdown,
            "interpreter_wall_milliseconds": whole.as_json(),
        }
    say(table("milliseconds, min / median / max", ["what", "time"], rows))
    say(
        "On PostgreSQL, resolving the runtime opens the pool (it waits for its first "
        "connection) and shutdown closes it."
    )
    ctx.save(NAME, results)
