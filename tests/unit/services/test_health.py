"""Readiness and liveness decided from statuses and holdings."""

from datetime import timedelta

from logicblocks.event.processing import ProcessStatus
from logicblocks.event.types import CategoryIdentifier, StreamIdentifier

from eventcomposition.lag import SourceLag
from eventcomposition.runtime import BROKER_SERVICE_NAME
from eventcomposition.services.health import (
    LagTrend,
    Readiness,
    check_readiness,
    liveness_failure,
)

RUNNING = {
    BROKER_SERVICE_NAME: ProcessStatus.RUNNING,
    "totals/c-1": ProcessStatus.RUNNING,
}
ORDERS = CategoryIdentifier(category="orders")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def lag(behind: int, *, group: str = "totals", head: int = 5000) -> SourceLag:
    return SourceLag(group=group, source=ORDERS, checkpoint=head - behind, head=head)


def readiness(
    statuses: dict[str, ProcessStatus] | None = None,
    holdings: list[SourceLag] | None = None,
    *,
    trend: LagTrend | None = None,
    max_lag_events: int = 100,
    holdings_error: str = "",
) -> Readiness:
    trend = trend or LagTrend()
    holdings = [] if holdings is None and not holdings_error else holdings
    if holdings is not None:
        trend.observe(holdings)
    return check_readiness(
        RUNNING if statuses is None else statuses,
        holdings,
        max_lag_events=max_lag_events,
        trend=trend,
        holdings_error=holdings_error,
    )


def test_a_running_node_within_its_lag_limit_is_ready() -> None:
    result = readiness(holdings=[lag(100)])

    assert result.ready
    assert result.failed == ()
    assert result.as_json()["failed"] == []


def test_a_broker_not_running_fails_the_broker_check() -> None:
    for status in (
        ProcessStatus.ERRORED,
        ProcessStatus.STARTING,
        ProcessStatus.STOPPED,
    ):
        result = readiness({**RUNNING, BROKER_SERVICE_NAME: status})

        assert [check.name for check in result.failed] == ["broker"]
        assert result.failed[0].reason == f"the event broker is {status.value}"


def test_a_broker_waiting_for_leadership_is_ready() -> None:
    assert readiness({**RUNNING, BROKER_SERVICE_NAME: ProcessStatus.WAITING}).ready


def test_a_node_whose_broker_never_started_is_not_ready() -> None:
    result = readiness({})

    assert [check.name for check in result.failed] == ["broker"]
    assert "not started" in result.failed[0].reason


def test_an_errored_consumer_fails_the_consumers_check_by_name() -> None:
    result = readiness(
        {
            **RUNNING,
            "totals/c-2": ProcessStatus.ERRORED,
            "audit/c-1": ProcessStatus.ERRORED,
        }
    )

    assert [check.name for check in result.failed] == ["consumers"]
    assert result.failed[0].reason == "errored: audit/c-1, totals/c-2"
    assert result.as_json()["checks"]["consumers"] == {  # type: ignore[index]
        "passed": False,
        "reason": "errored: audit/c-1, totals/c-2",
    }


def test_a_lag_over_the_limit_seen_once_fails_the_lag_check() -> None:
    result = readiness(holdings=[lag(101)])

    assert [check.name for check in result.failed] == ["lag"]
    assert result.failed[0].reason == (
        "totals category:orders is 101 behind (limit 100) and not falling"
    )


def test_a_lag_over_the_limit_but_falling_is_ready() -> None:
    clock = Clock()
    trend = LagTrend(timedelta(seconds=30), clock=clock)
    assert not readiness(holdings=[lag(5000)], trend=trend).ready

    clock.now += 10
    assert readiness(holdings=[lag(4000)], trend=trend).ready


def test_a_lag_over_the_limit_that_stopped_falling_for_a_window_is_not_ready() -> None:
    clock = Clock()
    trend = LagTrend(timedelta(seconds=30), clock=clock)
    readiness(holdings=[lag(5000)], trend=trend)
    clock.now += 10
    assert readiness(holdings=[lag(4000)], trend=trend).ready

    # Stuck at 4000: ready while the window still reaches back to 5000, then not.
    clock.now += 15
    assert readiness(holdings=[lag(4000)], trend=trend).ready
    clock.now += 20
    result = readiness(holdings=[lag(4000)], trend=trend)
    assert [check.name for check in result.failed] == ["lag"]


def test_a_rising_lag_over_the_limit_is_not_ready() -> None:
    clock = Clock()
    trend = LagTrend(timedelta(seconds=30), clock=clock)
    readiness(holdings=[lag(200)], trend=trend)
    clock.now += 5

    assert not readiness(holdings=[lag(300)], trend=trend).ready


def test_a_lag_at_the_limit_is_ready() -> None:
    assert readiness(holdings=[lag(100)], max_lag_events=100).ready


def test_only_the_sources_behind_are_named() -> None:
    behind = SourceLag(
        group="audit",
        source=StreamIdentifier(category="orders", stream="o-1"),
        checkpoint=None,
        head=500,
    )

    result = readiness(holdings=[lag(3), behind])

    assert result.failed[0].reason == (
        "audit stream:orders/o-1 is 501 behind (limit 100) and not falling"
    )


def test_unreadable_holdings_fail_the_lag_check_with_the_error() -> None:
    result = readiness(holdings=None, holdings_error="OperationalError")

    assert [check.name for check in result.failed] == ["lag"]
    assert result.failed[0].reason == "could not read the lag: OperationalError"


def test_several_checks_fail_together() -> None:
    result = readiness(
        {BROKER_SERVICE_NAME: ProcessStatus.ERRORED, "c": ProcessStatus.ERRORED},
        [lag(1000)],
    )

    assert [check.name for check in result.failed] == ["broker", "consumers", "lag"]
    assert not result.as_json()["ready"]


def test_a_source_no_longer_held_is_forgotten_by_the_trend() -> None:
    clock = Clock()
    trend = LagTrend(timedelta(seconds=30), clock=clock)
    trend.observe([lag(5000)])
    trend.observe([])
    clock.now += 5
    trend.observe([lag(4000)])

    assert not trend.falling(lag(4000))


def test_source_lag_counts_from_the_checkpoint_to_the_head() -> None:
    assert lag(7).lag == 7
    assert SourceLag("g", ORDERS, checkpoint=None, head=12).lag == 13
    assert SourceLag("g", ORDERS, checkpoint=None, head=None).lag == 0
    assert SourceLag("g", ORDERS, checkpoint=9, head=None).lag == 0


def test_only_a_broker_ended_for_good_is_fatal() -> None:
    assert liveness_failure(False) is None
    reason = liveness_failure(True)
    assert reason is not None
    assert "ended for good" in reason
    assert "restart the node" in reason
