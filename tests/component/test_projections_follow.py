"""``projections status GROUP --follow`` as a user sees it: a live progress bar with
an estimate of the time left on a terminal (a pseudo-terminal read by a VT100
emulator, pyte), plain lines when stdout is a pipe.

No node runs: the test moves the building version's checkpoints itself (what the
nodes' rebuild does), then swaps it in, so the progress is exactly known.
"""

import re
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool
from tests.component.terminal import Terminal, terminal

from eventcomposition.projections import ProjectionCatalog
from eventcomposition.schema import Migration
from eventcomposition.testing.postgres import ConnectionInfo
from eventcomposition.testing.processes import node_environment
from eventcomposition.testing.waiting import wait_until

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SETTINGS_DIR = PROJECT_ROOT / "settings"
GROUP = "tally"
TALLY = Migration("tally", "CREATE TABLE tally (n bigint)")
SOURCES = ("tally-0", "tally-1")
LIVE_AT = 1000
FOLLOW = [
    sys.executable,
    "-m",
    "eventcomposition",
    "projections",
    "status",
    GROUP,
    "--follow",
    "--interval",
    "0.1",
]
COLUMNS, LINES = 100, 30
TIMEOUT = 30.0
ETA = re.compile(r"\b\d+:\d\d:\d\d\b")

type Pool = AsyncConnectionPool[AsyncConnection[Any]]


async def set_positions(pool: Pool, group: str, position: int) -> None:
    async with pool.connection() as connection:
        for source in SOURCES:
            await connection.execute(
                'INSERT INTO consumer_checkpoints ("group", source, sequence_number, '
                "updated_at) VALUES (%s, %s, %s, now()) "
                'ON CONFLICT ("group", source) DO UPDATE '
                "SET sequence_number = EXCLUDED.sequence_number",
                [group, source, position],
            )


async def a_running_rebuild(pool: Pool) -> ProjectionCatalog:
    """Version 1 live at LIVE_AT in each source; version 2 prepared, at 0."""
    catalog = ProjectionCatalog(pool)
    await catalog.ensure_initial(GROUP, GROUP, [TALLY])
    await set_positions(pool, GROUP, LIVE_AT)
    await catalog.prepare(await catalog.request_rebuild(GROUP), [TALLY])
    return catalog


async def swap_in(pool: Pool, catalog: ProjectionCatalog) -> None:
    await set_positions(pool, f"{GROUP}@v2", LIVE_AT)
    assert await catalog.swap(GROUP, 2)


def shows(follow: Terminal, text: str) -> Callable[[], bool]:
    return lambda: text in bar_line(follow.screen())


def bar_line(screen: str) -> str:
    lines = [line for line in screen.splitlines() if line.startswith(f"{GROUP} v2 ")]
    return lines[-1] if lines else ""


async def test_on_a_terminal_a_bar_fills_with_its_estimate_then_the_final_line(
    postgres_database: ConnectionInfo, postgres_pool: Pool
) -> None:
    catalog = await a_running_rebuild(postgres_pool)
    environment = node_environment(postgres_database, settings_dir=SETTINGS_DIR)
    with terminal(
        FOLLOW, environment, columns=COLUMNS, lines=LINES, cwd=PROJECT_ROOT
    ) as follow:
        await wait_until(
            lambda: "0.0%" in bar_line(follow.screen()),
            timeout=TIMEOUT,
            description="the bar at 0%",
        )
        for done in (250, 500):
            await set_positions(postgres_pool, f"{GROUP}@v2", done)
            percent = f"{100 * done / LIVE_AT:.1f}%"
            await wait_until(
                shows(follow, percent),
                timeout=TIMEOUT,
                description=f"the bar at {percent}",
            )
        await wait_until(
            lambda: bool(ETA.search(bar_line(follow.screen()))),
            timeout=TIMEOUT,
            description="an estimate of the time left",
        )
        halfway = bar_line(follow.screen())
        # "tally v2 ━━━━━━━━━╺━━━━━━━━━  50.0% 0:00:01": the bar, drawn across.
        bar = halfway.removeprefix(f"{GROUP} v2 ").split()[0]
        assert len(bar) >= 10, halfway
        assert set(bar) <= set("━╸╺"), halfway

        await swap_in(postgres_pool, catalog)
        assert follow.process.wait(timeout=TIMEOUT) == 0
        await wait_until(
            lambda: "version 2 of 'tally' is live" in follow.screen(),
            timeout=TIMEOUT,
            description="the final line",
        )
        screen = follow.screen()
        assert "100.0%" in bar_line(screen), screen
        assert screen.rstrip().splitlines()[-1] == "version 2 of 'tally' is live"
        assert "Traceback" not in screen


def start_piped(env: Mapping[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        FOLLOW,
        env=env,
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def test_with_a_pipe_it_prints_plain_lines(
    postgres_database: ConnectionInfo, postgres_pool: Pool
) -> None:
    catalog = await a_running_rebuild(postgres_pool)
    environment = node_environment(postgres_database, settings_dir=SETTINGS_DIR)
    lines: list[str] = []
    with start_piped(environment) as follow:
        assert follow.stdout is not None
        reader = threading.Thread(
            target=lambda: lines.extend(follow.stdout or ()), daemon=True
        )
        reader.start()
        try:
            # --follow's first two lines (one an interval; the status table
            # leaves the progress line to --follow, so it shows once at a time).
            await wait_until(
                lambda: sum("tally v2: 0.0% of live v1" in line for line in lines) >= 2,
                timeout=TIMEOUT,
                description="two lines at 0%",
            )
            await set_positions(postgres_pool, f"{GROUP}@v2", 500)
            await wait_until(
                lambda: any("tally v2: 50.0% of live v1" in line for line in lines),
                timeout=TIMEOUT,
                description="a line at 50%",
            )
            await swap_in(postgres_pool, catalog)
            assert follow.wait(timeout=TIMEOUT) == 0
            reader.join(timeout=TIMEOUT)
        finally:
            if follow.poll() is None:
                follow.kill()
    text = "".join(lines)
    assert "\x1b" not in text, "no terminal codes in plain lines"
    assert "tally v2: 50.0% of live v1, 1000 sequence numbers behind, about " in text
    assert re.search(
        r"50\.0% of live v1, 1000 sequence numbers behind, about \d+ s", text
    )
    assert lines[-1].rstrip("\n") == "version 2 of 'tally' is live"
