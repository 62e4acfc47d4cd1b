"""``cluster status --watch``: the cluster's status read again and again.

On a terminal the report is redrawn in place (rich's ``Live``) with each holding's
events per second since the previous reading; elsewhere (a pipe, a file, a log
collector) each reading is printed in full after the last, under a line with its
time. A reading that fails (the database restarting, say) keeps the last report on
screen with the reason, and the next reading tries again.
"""

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import TextIO

import psycopg
from psycopg_pool import PoolTimeout
from rich.console import Console, Group, RenderableType
from rich.live import Live

from .cluster_report import ClusterStatus, render_status, status_parts

type StatusReader = Callable[[ClusterStatus | None], Awaitable[ClusterStatus]]
"""Reads the status now; given the previous reading, with the rates since then."""

# What a reading may fail with while the database is away or slow.
READING_ERRORS = (psycopg.Error, PoolTimeout, OSError)


async def watch_status(read: StatusReader, *, interval: float, output: TextIO) -> None:
    """Read and show the status every ``interval`` seconds until cancelled."""
    if output.isatty():
        await _watch_live(read, interval, Console(file=output, highlight=False))
    else:
        await _watch_plain(read, interval, output)


async def _watch_live(read: StatusReader, interval: float, console: Console) -> None:
    with Live(console=console, auto_refresh=False, redirect_stderr=False) as live:
        async for view in _views(read, interval):
            live.update(Group(*view), refresh=True)


async def _watch_plain(read: StatusReader, interval: float, output: TextIO) -> None:
    async for view in _views(read, interval, plain=True):
        for part in view:
            print(part, file=output)
        print(file=output, flush=True)


async def _views(
    read: StatusReader, interval: float, *, plain: bool = False
) -> AsyncIterator[list[RenderableType]]:
    loop = asyncio.get_running_loop()
    last: ClusterStatus | None = None
    while True:
        started = loop.time()
        try:
            last = await read(last)
            failure = None
        except READING_ERRORS as error:
            failure = _one_line(error)
        now = datetime.now(UTC)
        header = f"{now:%Y-%m-%d %H:%M:%S} UTC, every {interval:g}s" + (
            "" if plain else " (Ctrl-C to stop)"
        )
        view: list[RenderableType] = [header]
        if failure is not None:
            view.append(f"reading the status failed: {failure}; trying again")
        if last is not None:
            if plain:
                view.append(render_status(last, rates=True))
            else:
                view.extend(status_parts(last, rates=True))
        yield view
        await asyncio.sleep(max(interval - (loop.time() - started), 0))


def _one_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return "; ".join(lines) or type(error).__name__
