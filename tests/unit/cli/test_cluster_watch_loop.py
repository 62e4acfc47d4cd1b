"""``cluster status --watch``'s loop and options, with a status reader of our own."""

import asyncio
import io
import re
from datetime import UTC, datetime

import psycopg
import pytest

from eventcomposition.cli import main
from eventcomposition.cli.cluster_report import ClusterStatus
from eventcomposition.cli.cluster_watch import watch_status


class Readings:
    """Statuses to return one after another; a planted failure; then the end."""

    def __init__(self, *results: ClusterStatus | Exception) -> None:
        self._results = list(results)
        self.given: list[ClusterStatus | None] = []

    async def __call__(self, since: ClusterStatus | None) -> ClusterStatus:
        self.given.append(since)
        if not self._results:
            raise asyncio.CancelledError  # as Ctrl-C does to the running watch
        result = self._results.pop(0)
        if isinstance(result, Exception):
            raise result
        return result


def a_status(where: str) -> ClusterStatus:
    return ClusterStatus(where, datetime.now(UTC), [], None, [], [])


async def test_without_a_terminal_each_reading_follows_the_last() -> None:
    first, second = a_status("first"), a_status("second")
    readings = Readings(first, second)
    output = io.StringIO()

    with pytest.raises(asyncio.CancelledError):
        await watch_status(readings, interval=0.01, output=output)

    text = output.getvalue()
    assert text.index("cluster at first") < text.index("cluster at second")
    assert text.count("UTC, every 0.01s\n") == 2
    # Each reading gets the previous one, to count the events between them.
    assert readings.given == [None, first, second]


async def test_a_failed_reading_says_why_keeps_the_last_status_and_goes_on() -> None:
    first, third = a_status("first"), a_status("third")
    readings = Readings(
        first, psycopg.OperationalError("connection refused\n\tIs it up?"), third
    )
    output = io.StringIO()

    with pytest.raises(asyncio.CancelledError):
        await watch_status(readings, interval=0.01, output=output)

    readings_shown = re.split(r"^.* UTC, every 0.01s$", output.getvalue(), flags=re.M)
    assert (
        "reading the status failed: connection refused; Is it up?; trying "
        in (readings_shown[2])
    )
    assert "cluster at first" in readings_shown[2]
    assert "cluster at third" in readings_shown[3]
    assert readings.given == [None, first, first, third]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--watch", "--json"], "it takes neither --json nor --wait"),
        (["--watch", "--wait", "3"], "it takes neither --json nor --wait"),
        (["--interval", "2"], "--interval applies to --watch only"),
        (["--watch", "--interval", "0"], "not a number of seconds of at least 0.1"),
        (["--watch", "--interval", "soon"], "not a number of seconds of at least"),
    ],
)
def test_options_that_do_not_go_together_are_refused_in_one_line(
    arguments: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["cluster", "status", *arguments])

    assert exited.value.code == 2
    error = capsys.readouterr().err.splitlines()[-1]
    assert message in error
