"""The rules of projection versions: names, what may happen when, and progress."""

from datetime import UTC, datetime, timedelta

import pytest

from eventcomposition.projections import (
    ProjectionError,
    ProjectionVersion,
    RebuildInProgressError,
    VersionState,
    checkpoint_group,
    stable_schema_name,
    version_schema_name,
)
from eventcomposition.projections.versions import (
    behind,
    caught_up,
    check_can_cancel,
    check_can_drop,
    check_can_rebuild,
    check_schema_name,
    expired,
    next_version,
    progress,
    rebuild_progress,
)

NOW = datetime(2026, 12, 6, 9, 0, tzinfo=UTC)


def version(
    number: int,
    state: VersionState,
    *,
    prepared: bool = True,
    retired_at: datetime | None = None,
) -> ProjectionVersion:
    return ProjectionVersion(
        group="totals",
        version=number,
        state=state,
        schema_name=version_schema_name("totals", number),
        stable_schema="totals",
        prepared=prepared,
        created_at=NOW,
        retired_at=retired_at,
    )


LIVE = VersionState.LIVE
BUILDING = VersionState.BUILDING
RETIRED = VersionState.RETIRED
CANCELLED = VersionState.CANCELLED


def test_version_one_keeps_the_group_name_for_its_checkpoints() -> None:
    assert checkpoint_group("totals", 1) == "totals"
    assert checkpoint_group("totals", 2) == "totals@v2"
    assert version(3, BUILDING).checkpoint_group == "totals@v3"


def test_schema_names_are_plain_identifiers_and_distinct_per_group() -> None:
    assert stable_schema_name("totals") == "totals"
    assert version_schema_name("totals", 2) == "totals_v2"
    dashed = stable_schema_name("orders-totals")
    underscored = stable_schema_name("orders_totals")
    assert dashed.startswith("orders_totals_")
    assert dashed != underscored
    assert stable_schema_name("Orders-Totals") != dashed
    assert stable_schema_name("9lives").startswith("p_9lives")
    long = stable_schema_name("x" * 100)
    assert len(version_schema_name(long, 999999)) <= 63


@pytest.mark.parametrize("name", ["Totals", "1totals", "to-tals", "t" * 56])
def test_a_declared_schema_name_must_be_a_plain_identifier(name: str) -> None:
    with pytest.raises(ProjectionError, match="not usable"):
        check_schema_name(name)


def test_a_rebuild_needs_a_live_version_and_no_other_rebuild() -> None:
    with pytest.raises(ProjectionError, match="no live projection version"):
        check_can_rebuild("totals", [])
    check_can_rebuild("totals", [version(1, RETIRED), version(2, LIVE)])
    with pytest.raises(RebuildInProgressError, match="to version 3 is already running"):
        check_can_rebuild("totals", [version(2, LIVE), version(3, BUILDING)])


def test_version_numbers_are_never_reused() -> None:
    assert next_version([]) == 1
    assert next_version([version(1, LIVE), version(2, CANCELLED)]) == 3


def test_only_a_running_rebuild_can_be_cancelled() -> None:
    with pytest.raises(ProjectionError, match="nothing to cancel"):
        check_can_cancel("totals", [version(1, LIVE)])
    assert check_can_cancel("totals", [version(1, LIVE), version(2, BUILDING)]) == (
        version(2, BUILDING)
    )


def test_only_a_retired_version_can_be_dropped() -> None:
    versions = [version(1, RETIRED), version(2, LIVE), version(3, BUILDING)]
    assert check_can_drop("totals", versions, 1) == version(1, RETIRED)
    with pytest.raises(ProjectionError, match="is live"):
        check_can_drop("totals", versions, 2)
    with pytest.raises(ProjectionError, match="cancel the rebuild"):
        check_can_drop("totals", versions, 3)
    with pytest.raises(
        ProjectionError, match=r"no version 7 \(its versions: 1, 2, 3\)"
    ):
        check_can_drop("totals", versions, 7)


def test_retired_versions_expire_after_the_grace_period_only() -> None:
    old = version(1, RETIRED, retired_at=NOW - timedelta(hours=2))
    recent = version(2, RETIRED, retired_at=NOW - timedelta(minutes=5))
    versions = [old, recent, version(3, LIVE)]
    assert expired(versions, timedelta(hours=1), NOW) == [old]
    assert expired(versions, None, NOW) == []


def test_caught_up_when_every_live_source_is_reached() -> None:
    live = {"left": 10, "right": 20}
    assert caught_up(live, {"left": 10, "right": 25})
    assert not caught_up(live, {"left": 10, "right": 19})
    assert not caught_up(live, {"left": 10})  # a source not started yet
    assert caught_up({}, {})  # an empty log
    assert caught_up({}, {"left": 3})


def test_progress_and_lag_are_weighed_by_sequence_numbers() -> None:
    live = {"left": 100, "right": 300}
    assert progress(live, {}) == 0.0
    assert progress(live, {"left": 100, "right": 100}) == 0.5
    assert progress(live, {"left": 500, "right": 300}) == 1.0
    assert progress({}, {}) == 1.0
    assert behind(live, {"left": 40}) == 60 + 300
    assert behind(live, {"left": 400, "right": 300}) == 0


def test_an_unprepared_rebuild_shows_no_progress() -> None:
    report = rebuild_progress(
        version(1, LIVE), version(2, BUILDING, prepared=False), {"a": 5}, {"a": 5}
    )
    assert (report.progress, report.caught_up, report.prepared) == (0.0, False, False)
    ready = rebuild_progress(version(1, LIVE), version(2, BUILDING), {"a": 8}, {"a": 2})
    assert ready.as_json() == {
        "group": "totals",
        "version": 2,
        "live_version": 1,
        "progress": 0.25,
        "behind": 6,
        "caught_up": False,
        "prepared": True,
        "error": None,
    }
