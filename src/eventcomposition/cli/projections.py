"""``eventcomposition projections list|rebuild|status|cancel|drop|reset``: versions of
projections, rebuilt beside the live one by the running nodes and swapped atomically.

The commands only change the ``projection_versions`` table (and, for cancel, drop and
reset, what a version owns): the nodes that run the group do the work, so these
commands need the database, not the application.
"""

import argparse
import asyncio
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from ..projections import ProjectionCatalog, ProjectionVersion, RebuildProgress
from ..projections.versions import VersionState, building_of, live_of
from .db import reachable_postgres
from .errors import CommandError
from .tables import add_plain_row, new_table, render

type Action = Callable[[ProjectionCatalog, argparse.Namespace], Any]


# -- the commands (declared in ``parsers``) ------------------------------------------


async def list_command(args: argparse.Namespace) -> int:
    return await _run(show_list, args)


async def rebuild_command(args: argparse.Namespace) -> int:
    return await _run(request_rebuild, args)


async def status_command(args: argparse.Namespace) -> int:
    return await _run(show_status, args)


async def cancel_command(args: argparse.Namespace) -> int:
    return await _run(cancel_rebuild, args)


async def drop_command(args: argparse.Namespace) -> int:
    return await _run(drop_version, args)


def reset_command(args: argparse.Namespace) -> int:
    """Asks first (before any connection) unless ``--yes``."""
    return _confirmed_reset(args)


async def _run(action: Action, args: argparse.Namespace) -> int:
    async with _catalog(args) as catalog:
        try:
            result: int = await action(catalog, args)
        except psycopg.errors.UndefinedTable:
            raise CommandError(
                "the database has no projection_versions table: run "
                "'eventcomposition db migrate' (or start a node) first"
            ) from None
        except (psycopg.errors.DeadlockDetected, psycopg.errors.LockNotAvailable):
            raise CommandError(
                "the database chose this command as a deadlock victim against the "
                "nodes' work: nothing changed; run it again"
            ) from None
        return result


@asynccontextmanager
async def _catalog(args: argparse.Namespace) -> AsyncIterator[ProjectionCatalog]:
    postgres = await reachable_postgres(args)
    async with AsyncConnectionPool[AsyncConnection[Any]](
        postgres.conninfo(), min_size=1, max_size=2, open=False
    ) as pool:
        yield ProjectionCatalog(pool)


# -- the actions -------------------------------------------------------------------


async def show_list(catalog: ProjectionCatalog, args: argparse.Namespace) -> int:
    groups = await catalog.all_versions()
    if not groups:
        print("no versioned projections")
        return 0
    table = new_table("GROUP", "SCHEMA", "LIVE", "BUILDING", "RETIRED", numeric=())
    for group, versions in groups.items():
        live, building = live_of(versions), building_of(versions)
        progress = await catalog.progress(group) if building else None
        add_plain_row(
            table,
            group,
            versions[0].stable_schema,
            f"v{live.version}" if live else "-",
            _building_cell(building, progress),
            ", ".join(
                f"v{v.version}" for v in versions if v.state is VersionState.RETIRED
            )
            or "-",
        )
    print(render(table))
    return 0


async def request_rebuild(catalog: ProjectionCatalog, args: argparse.Namespace) -> int:
    version = await catalog.request_rebuild(args.group)
    print(
        f"rebuilding '{args.group}' as version {version.version} in schema "
        f"{version.schema_name}; the nodes running the group build it and swap it "
        "in once it has caught up"
    )
    if args.follow:
        return await _follow(catalog, args.group, version.version, args.interval)
    return 0


async def show_status(catalog: ProjectionCatalog, args: argparse.Namespace) -> int:
    versions = await _versions(catalog, args.group)
    table = new_table("VERSION", "STATE", "SCHEMA", "CREATED", "SWAPPED", "RETIRED")
    for v in versions:
        add_plain_row(
            table,
            str(v.version),
            v.state.value,
            v.schema_name,
            _when(v.created_at),
            _when(v.swapped_at),
            _when(v.retired_at),
        )
    print(render(table))
    building = building_of(versions)
    if building is None:
        print(f"no rebuild of '{args.group}' is running")
        return 0
    if args.follow:  # its first line is the progress now
        return await _follow(catalog, args.group, building.version, args.interval)
    progress = await catalog.progress(args.group)
    if progress is not None:
        print(describe_progress(progress))
    return 0


async def cancel_rebuild(catalog: ProjectionCatalog, args: argparse.Namespace) -> int:
    version = await catalog.cancel(args.group)
    print(
        f"cancelled the rebuild of '{args.group}' to version {version.version}; "
        f"dropped schema {version.schema_name}"
    )
    return 0


async def drop_version(catalog: ProjectionCatalog, args: argparse.Namespace) -> int:
    version = await catalog.drop(args.group, args.version)
    print(
        f"dropped version {version.version} of '{args.group}' "
        f"(schema {version.schema_name}, its checkpoints and dead letters)"
    )
    return 0


def _confirmed_reset(args: argparse.Namespace) -> int:
    if not args.yes:
        if not sys.stdin.isatty():
            raise CommandError(
                f"resetting empties the live version of '{args.group}': pass --yes "
                "to confirm when not on a terminal"
            )
        answer = input(
            f"Empty the live version of '{args.group}' and process it again from "
            "the first event? Readers see it empty, then filling. [y/N] "
        )
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing changed")
            return 1
    return asyncio.run(_run(reset_live, args))


async def reset_live(catalog: ProjectionCatalog, args: argparse.Namespace) -> int:
    live = live_of(await _versions(catalog, args.group))
    if live is None:
        raise CommandError(f"'{args.group}' has no live version: nothing to reset")
    await catalog.reset(args.group)
    print(
        f"reset version {live.version} of '{args.group}': its tables are empty and "
        "the nodes process it again from the first event"
    )
    return 0


# -- support -------------------------------------------------------------------


async def _versions(catalog: ProjectionCatalog, group: str) -> list[ProjectionVersion]:
    versions = await catalog.versions(group)
    if not versions:
        known = ", ".join(await catalog.all_versions()) or "none"
        raise CommandError(
            f"no versioned projection of group '{group}' (known: {known}); a node "
            "declaring it creates its first version"
        )
    return versions


def _building_cell(
    building: ProjectionVersion | None, progress: RebuildProgress | None
) -> str:
    if building is None:
        return "-"
    if progress is None or not progress.prepared:
        return f"v{building.version} preparing"
    return f"v{building.version} {progress.progress:.1%}"


def _when(moment: Any) -> str:
    return moment.isoformat(timespec="seconds") if moment is not None else "-"


def describe_progress(progress: RebuildProgress, eta: float | None = None) -> str:
    """One plain line about a rebuild."""
    if progress.error:
        return (
            f"{progress.group} v{progress.version}: preparing failed: {progress.error}"
        )
    if not progress.prepared:
        return f"{progress.group} v{progress.version}: preparing its schema"
    line = (
        f"{progress.group} v{progress.version}: {progress.progress:.1%} of live "
        f"v{progress.live_version}, {progress.behind} sequence numbers behind"
    )
    if eta is not None:
        line += f", about {eta:.0f} s to go"
    return line


def estimate_eta(first: tuple[float, float], last: tuple[float, float]) -> float | None:
    """Seconds left, from two (time, progress) samples; None when not moving."""
    (t0, p0), (t1, p1) = first, last
    if t1 <= t0 or p1 <= p0:
        return None
    return (1.0 - p1) * (t1 - t0) / (p1 - p0)


async def _follow(
    catalog: ProjectionCatalog, group: str, version: int, interval: float
) -> int:
    """Show the rebuild's progress until it is swapped in (0) or stops (1)."""
    if sys.stdout.isatty():
        return await _follow_with_bar(catalog, group, version, interval)
    first: tuple[float, float] | None = None
    while True:
        progress = await catalog.progress(group)
        if progress is None or progress.version != version:
            return await _ended(catalog, group, version)
        now = (time.monotonic(), progress.progress)
        first = first or now
        print(describe_progress(progress, estimate_eta(first, now)), flush=True)
        await asyncio.sleep(interval)


async def _follow_with_bar(
    catalog: ProjectionCatalog, group: str, version: int, interval: float
) -> int:
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>5.1f}%"),
        TimeRemainingColumn(),
        console=Console(),
    ) as bar:
        task = bar.add_task(f"{group} v{version}", total=1.0)
        while True:
            progress = await catalog.progress(group)
            if progress is None or progress.version != version:
                bar.update(task, completed=1.0)
                break
            bar.update(task, completed=progress.progress)
            await asyncio.sleep(interval)
    return await _ended(catalog, group, version)


async def _ended(catalog: ProjectionCatalog, group: str, version: int) -> int:
    found = next(
        (v for v in await catalog.versions(group) if v.version == version), None
    )
    state = found.state if found else VersionState.DROPPED
    if state is VersionState.LIVE:
        print(f"version {version} of '{group}' is live")
        return 0
    print(f"the rebuild of '{group}' to version {version} ended: it is {state.value}")
    return 1
