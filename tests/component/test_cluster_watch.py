"""``eventcomposition cluster status --watch`` in a real terminal (a pseudo-terminal
read by a VT100 emulator, pyte), and with stdout a pipe."""

import re
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from logicblocks.event.store import EventStore, PostgresEventStorageAdapter
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool
from tests.component.terminal import EXIT_TIMEOUT, terminal

from eventcomposition.consumers import source_key
from eventcomposition.demo import (
    DemoNames,
    generate_orders,
    publish_orders,
)
from eventcomposition.testing.postgres import ConnectionInfo
from eventcomposition.testing.processes import (
    NodeProcess,
    NodeProcesses,
    node_environment,
)
from eventcomposition.testing.waiting import wait_until

PROJECT_ROOT = Path(__file__).resolve().parents[2]
WATCH = [sys.executable, "-m", "eventcomposition", "cluster", "status", "--watch"]
APP = "eventcomposition.demo:DemoContainer"
NAMES = DemoNames()
# The demo's sources: the partitions of its one category, orders#0/16 ... #15/16.
PARTITIONS = sorted(source_key(partition) for partition in NAMES.partitions())
SOURCE_PREFIX = f"{NAMES.category}#"
COLUMNS, LINES = 160, 60

type Pool = AsyncConnectionPool[AsyncConnection[Any]]


def rows_of(screen: str, first_cell: str) -> list[list[str]]:
    return [
        line.split()
        for line in screen.splitlines()
        if line.startswith(first_cell + " ")
    ]


def held_rows(screen: str) -> list[list[str]]:
    """The holding rows on the screen: node, subscriber, source, ..., events/s."""
    return [
        cells
        for line in screen.splitlines()
        if len(cells := line.split()) == 7 and cells[2].startswith(SOURCE_PREFIX)
    ]


def holders(screen: str) -> set[str]:
    """The nodes holding partitions of the demo category on the screen."""
    return {cells[0] for cells in held_rows(screen)}


def rates(screen: str) -> list[float]:
    """The events/s column of every holding row on the screen."""
    values = []
    for line in screen.splitlines():
        cells = line.split()
        if len(cells) == 7 and re.fullmatch(r"\d+\.\d", cells[-1]):
            values.append(float(cells[-1]))
    return values


def start_node(
    nodes: NodeProcesses, env: Mapping[str, str], node_id: str, role: str
) -> NodeProcess:
    return nodes.run_node(
        env=env, app=APP, role=role, node_id=node_id, cwd=PROJECT_ROOT
    )


async def test_the_view_redraws_as_events_flow_and_an_observer_joins(
    postgres_database: ConnectionInfo, postgres_pool: Pool
) -> None:
    environment = node_environment(postgres_database)
    with NodeProcesses() as nodes:
        start_node(nodes, environment, "full-1", "full")
        with terminal(WATCH, environment, columns=COLUMNS, lines=LINES) as watch:
            await wait_until(
                lambda: (
                    len(held_rows(watch.screen())) == len(PARTITIONS)
                    and "leading coordinator: full-1" in watch.screen()
                ),
                timeout=60,
                description="the full node holding the demo partitions, leading",
            )
            before = watch.settled_screen()
            assert holders(before) == {"full-1"}, before
            assert len(held_rows(before)) == len(PARTITIONS), before
            assert "events/s" in before
            assert not rows_of(before, "observer-1")

            store = EventStore(
                adapter=PostgresEventStorageAdapter(connection_source=postgres_pool)
            )
            await publish_orders(store, generate_orders(300, seed=7), names=NAMES)
            await wait_until(
                lambda: any(rate > 0 for rate in rates(watch.screen())),
                timeout=30,
                description="a holding processing events at some events/s",
            )

            observer = start_node(nodes, environment, "observer-1", "observer")
            await wait_until(
                lambda: (
                    holders(watch.screen()) == {"full-1", "observer-1"}
                    and len(held_rows(watch.screen())) == len(PARTITIONS)
                ),
                timeout=60,
                description="the observer's holdings on screen beside the full node's",
            )
            after = watch.settled_screen()
            assert rows_of(after, "observer-1"), after
            rows = held_rows(after)
            assert sorted(cells[2] for cells in rows) == PARTITIONS, after
            assert holders(after) == {"full-1", "observer-1"}, after

            watch.interrupt()
            assert watch.process.wait(timeout=EXIT_TIMEOUT) == 0
            stderr = (
                watch.process.stderr.read().decode() if watch.process.stderr else ""
            )
            assert "Traceback" not in stderr + watch.screen(), stderr
            observer.terminate()


def test_without_a_terminal_each_reading_is_printed_after_the_last(
    postgres_database: ConnectionInfo,
) -> None:
    environment = node_environment(postgres_database)
    with subprocess.Popen(
        [*WATCH, "--interval", "0.2"],
        env=environment,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as watch:
        assert watch.stdout is not None
        readings = 0
        lines = []
        for line in watch.stdout:
            lines.append(line)
            if line.startswith("cluster at "):
                readings += 1
            if readings == 3:
                break
        watch.send_signal(signal.SIGINT)
        rest, stderr = watch.communicate(timeout=EXIT_TIMEOUT)

    output = "".join(lines) + rest
    assert watch.returncode == 0, stderr
    assert "\x1b" not in output
    assert "Traceback" not in stderr
    headers = [line for line in output.splitlines() if line.endswith("UTC, every 0.2s")]
    assert len(headers) >= 3, output
    assert "no live nodes" in output


def test_a_reader_that_goes_away_ends_the_watch_quietly(
    postgres_database: ConnectionInfo,
) -> None:
    # As `cluster status --watch | head -1`: every write fails with EPIPE.
    watch = NodeProcess(
        [*WATCH, "--interval", "0.2"],
        env=node_environment(postgres_database),
        output_closed=True,
    )
    try:
        assert watch.wait(timeout=30) == 0
    finally:
        watch.close()
