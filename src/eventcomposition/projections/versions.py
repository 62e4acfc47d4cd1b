"""Versions of a projection and the rules that move them: plain values and functions.

A subscriber group's projection has versions 1, 2, 3, ... Each version has its own
tables, in its own PostgreSQL schema, and its own checkpoints, claims and dead
letters under its own checkpoint group (version 1 under the group's name, so an
existing group keeps its checkpoints; version N under ``group@vN``).

A version is ``building`` (rebuilt from the start of the log beside the live one),
``live`` (the one readers see through the group's stable schema), ``retired`` (the
previous live one, kept until dropped), ``cancelled`` or ``dropped``. At most one
version of a group is live and at most one is building.
"""

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from ..errors import EventCompositionError

_MAX_IDENTIFIER = 63
_VERSION_SUFFIX_ROOM = 8  # "_v" and up to six digits


class VersionState(StrEnum):
    BUILDING = "building"
    LIVE = "live"
    RETIRED = "retired"
    CANCELLED = "cancelled"
    DROPPED = "dropped"


class ProjectionError(EventCompositionError):
    """A projection operation that cannot be done now; the message says why and
    what to do."""


class RebuildInProgressError(ProjectionError):
    """A rebuild was requested while another one of the same group runs."""


@dataclass(frozen=True)
class ProjectionVersion:
    """One version of a group's projection, as stored in ``projection_versions``."""

    group: str
    version: int
    state: VersionState
    schema_name: str
    stable_schema: str
    prepared: bool
    created_at: datetime
    swapped_at: datetime | None = None
    retired_at: datetime | None = None
    error: str | None = None

    @property
    def checkpoint_group(self) -> str:
        return checkpoint_group(self.group, self.version)


def checkpoint_group(group: str, version: int) -> str:
    """The group name a version's claims, checkpoints and dead letters use."""
    return group if version == 1 else f"{group}@v{version}"


def stable_schema_name(group: str) -> str:
    """The default stable schema of ``group``: its name as a plain identifier
    (lower case, ``_`` for anything but letters, digits and ``_``), with a short
    hash of the name when that changed it, so two groups never share one."""
    plain = re.sub(r"[^a-z0-9_]", "_", group.lower())
    if not plain or not plain[0].isalpha():
        plain = f"p_{plain}"
    room = _MAX_IDENTIFIER - _VERSION_SUFFIX_ROOM
    if plain == group and len(plain) <= room:
        return plain
    digest = hashlib.sha1(group.encode("utf-8")).hexdigest()[:6]
    return f"{plain[: room - 7]}_{digest}"


def version_schema_name(stable_schema: str, version: int) -> str:
    """The schema holding a version's tables."""
    return f"{stable_schema}_v{version}"


def check_schema_name(name: str) -> str:
    """``name`` if it is a usable, unquoted PostgreSQL schema name; else raise."""
    room = _MAX_IDENTIFIER - _VERSION_SUFFIX_ROOM
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name) or len(name) > room:
        raise ProjectionError(
            f"schema name {name!r} is not usable: use lower-case letters, digits "
            f"and '_', starting with a letter, at most {room} characters"
        )
    return name


# -- what a group's versions say ---------------------------------------------------


def live_of(versions: Iterable[ProjectionVersion]) -> ProjectionVersion | None:
    return next((v for v in versions if v.state is VersionState.LIVE), None)


def building_of(versions: Iterable[ProjectionVersion]) -> ProjectionVersion | None:
    return next((v for v in versions if v.state is VersionState.BUILDING), None)


def next_version(versions: Sequence[ProjectionVersion]) -> int:
    """Version numbers are never reused, even for cancelled or dropped versions."""
    return max((v.version for v in versions), default=0) + 1


def check_can_rebuild(group: str, versions: Sequence[ProjectionVersion]) -> None:
    """Raise unless a rebuild of ``group`` may start now."""
    if live_of(versions) is None:
        raise ProjectionError(
            f"subscriber group '{group}' has no live projection version yet: start "
            "a node that declares it as a versioned projection first"
        )
    building = building_of(versions)
    if building is not None:
        raise RebuildInProgressError(
            f"a rebuild of '{group}' to version {building.version} is already "
            f"running: follow it with 'eventcomposition projections status {group}'"
            f" or stop it with 'eventcomposition projections cancel {group}'"
        )


def check_can_cancel(
    group: str, versions: Sequence[ProjectionVersion]
) -> ProjectionVersion:
    building = building_of(versions)
    if building is None:
        raise ProjectionError(f"no rebuild of '{group}' is running: nothing to cancel")
    return building


def check_can_drop(
    group: str, versions: Sequence[ProjectionVersion], version: int
) -> ProjectionVersion:
    """The version to drop; raises unless it is retired."""
    found = next((v for v in versions if v.version == version), None)
    if found is None:
        known = ", ".join(str(v.version) for v in versions) or "none"
        raise ProjectionError(
            f"'{group}' has no version {version} (its versions: {known})"
        )
    if found.state is VersionState.RETIRED:
        return found
    if found.state is VersionState.LIVE:
        raise ProjectionError(
            f"version {version} of '{group}' is live: only a retired version can be "
            "dropped (rebuild first, or use 'projections reset' to empty it in place)"
        )
    if found.state is VersionState.BUILDING:
        raise ProjectionError(
            f"version {version} of '{group}' is being built: cancel the rebuild "
            f"with 'eventcomposition projections cancel {group}'"
        )
    raise ProjectionError(f"version {version} of '{group}' is {found.state} already")


def expired(
    versions: Iterable[ProjectionVersion], grace: timedelta | None, now: datetime
) -> list[ProjectionVersion]:
    """Retired versions whose grace period is over (none without a grace period)."""
    if grace is None:
        return []
    return [
        v
        for v in versions
        if v.state is VersionState.RETIRED
        and v.retired_at is not None
        and v.retired_at + grace <= now
    ]


# -- progress of a rebuild, from checkpoints -----------------------------------------


def caught_up(live: Mapping[str, int], building: Mapping[str, int]) -> bool:
    """Whether the building version has applied, in every source, at least what
    the live one has: swapping then neither loses nor repeats an event."""
    return all(
        building.get(source, -1) >= position for source, position in live.items()
    )


def behind(live: Mapping[str, int], building: Mapping[str, int]) -> int:
    """How far the building version trails the live one, in sequence numbers summed
    over the sources (an upper bound of the events still to apply)."""
    return sum(
        max(0, position - building.get(source, 0)) for source, position in live.items()
    )


def progress(live: Mapping[str, int], building: Mapping[str, int]) -> float:
    """The share of the live version's progress the building one has reached,
    between 0 and 1, weighed by sequence numbers over the sources."""
    total = sum(live.values())
    if total <= 0:
        return 1.0
    done = sum(
        min(building.get(source, 0), position) for source, position in live.items()
    )
    return max(0.0, min(1.0, done / total))


@dataclass(frozen=True)
class RebuildProgress:
    """Where a rebuild stands, for the CLI, ``cluster status``, ``/status`` and
    metrics."""

    group: str
    version: int
    live_version: int
    progress: float
    behind: int
    caught_up: bool
    prepared: bool
    error: str | None = None

    def as_json(self) -> dict[str, object]:
        return {
            "group": self.group,
            "version": self.version,
            "live_version": self.live_version,
            "progress": round(self.progress, 4),
            "behind": self.behind,
            "caught_up": self.caught_up,
            "prepared": self.prepared,
            "error": self.error,
        }


def rebuild_progress(
    live_version: ProjectionVersion,
    building_version: ProjectionVersion,
    live: Mapping[str, int],
    building: Mapping[str, int],
) -> RebuildProgress:
    return RebuildProgress(
        group=building_version.group,
        version=building_version.version,
        live_version=live_version.version,
        progress=progress(live, building) if building_version.prepared else 0.0,
        behind=behind(live, building),
        caught_up=building_version.prepared and caught_up(live, building),
        prepared=building_version.prepared,
        error=building_version.error,
    )
