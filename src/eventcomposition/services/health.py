"""Liveness and readiness of a node, decided from what it reports.

Live: the node can still do its work without a restart. It is not live once the
runtime's broker service has ended for good (its error handler gave up): the node
then neither heartbeats nor receives sources, and only a new process rejoins the
cluster. Failures that heal by themselves (a consumer retrying, a broker part
restarting, the database away for a while) leave it live and make it not ready.

Ready: every check passes:

- ``broker``: the broker runs (``running``, or ``waiting`` for leadership);
- ``database``: the node's database answered within the probe's budget (every
  role: a coordinator that cannot reach its database cannot lead);
- ``consumers``: no consumer is errored;
- ``lag``: the holdings could be read, and every held source's lag is at most
  ``max_lag_events`` or has fallen over the last ``trend_window``.
"""

import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

from logicblocks.event.processing import ProcessStatus
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from ..connections import autocommitting
from ..lag import SourceLag
from ..metrics import source_label
from ..runtime.runtime import BROKER_SERVICE_NAME

BROKER_RUNNING = frozenset({ProcessStatus.RUNNING, ProcessStatus.WAITING})


class DatabaseCheck(Protocol):
    """Whether the node's database answers: ``check`` raises when it does not."""

    async def check(self) -> None: ...


class PostgresCheck:
    """One ``SELECT 1`` through the node's pool, in autocommit (one statement).

    Bound it with a timeout: with the server gone, taking a connection from the
    pool waits for the pool's own timeout.
    """

    def __init__(self, pool: AsyncConnectionPool[AsyncConnection[Any]]) -> None:
        self._pool = pool

    async def check(self) -> None:
        async with autocommitting(self._pool) as connection:
            # Named, so the statement statistics tell it from other checks.
            await connection.execute("SELECT 1 AS database_check")


@dataclass(frozen=True)
class Check:
    """One readiness check: its name, whether it passed and, if not, why."""

    name: str
    passed: bool
    reason: str = ""


@dataclass(frozen=True)
class Readiness:
    checks: tuple[Check, ...]

    @property
    def ready(self) -> bool:
        return all(check.passed for check in self.checks)

    @property
    def failed(self) -> tuple[Check, ...]:
        return tuple(check for check in self.checks if not check.passed)

    def as_json(self) -> dict[str, object]:
        return {
            "ready": self.ready,
            "failed": [check.name for check in self.failed],
            "checks": {
                check.name: {"passed": check.passed, "reason": check.reason or None}
                for check in self.checks
            },
        }


type _Key = tuple[str, str]


class LagTrend:
    """Recent lag samples per held source, to tell whether a lag is falling.

    A lag is falling when it is below the oldest sample kept, which is the newest
    one at least ``window`` old (or the oldest one seen, for a younger holding).
    """

    def __init__(
        self,
        window: timedelta = timedelta(seconds=60),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._window = window.total_seconds()
        self._clock = clock
        self._samples: dict[_Key, deque[tuple[float, int]]] = {}

    def observe(self, holdings: Sequence[SourceLag]) -> None:
        now = self._clock()
        current = {
            _key(holding): holding.lag
            for holding in holdings
            if holding.lag is not None
        }
        for gone in self._samples.keys() - current.keys():
            del self._samples[gone]
        for key, lag in current.items():
            samples = self._samples.setdefault(key, deque())
            samples.append((now, lag))
            while len(samples) > 2 and samples[1][0] <= now - self._window:
                samples.popleft()

    def falling(self, holding: SourceLag) -> bool:
        samples = self._samples.get(_key(holding))
        if not samples or holding.lag is None:
            return False
        return holding.lag < samples[0][1]


def _key(holding: SourceLag) -> _Key:
    return holding.group, source_label(holding.source)


def liveness_failure(broker_failed: bool) -> str | None:
    """Why the node is not live, or ``None`` when it is."""
    if broker_failed:
        return (
            f"the '{BROKER_SERVICE_NAME}' service ended for good (its error handler "
            "gave up): restart the node"
        )
    return None


def check_readiness(
    runtime_statuses: Mapping[str, ProcessStatus],
    holdings: Sequence[SourceLag] | None,
    *,
    max_lag_events: int,
    trend: LagTrend,
    holdings_error: str = "",
    database_error: str | None = None,
) -> Readiness:
    """Every readiness check. ``holdings`` is ``None`` when it could not be read;
    ``database_error`` says why the database did not answer, when it did not."""
    return Readiness(
        (
            _check_broker(runtime_statuses),
            _check_consumers(runtime_statuses),
            Check("database", database_error is None, database_error or ""),
            _check_lag(holdings, max_lag_events, trend, holdings_error),
        )
    )


def _check_broker(statuses: Mapping[str, ProcessStatus]) -> Check:
    status = statuses.get(BROKER_SERVICE_NAME)
    if status in BROKER_RUNNING:
        return Check("broker", True)
    shown = status.value if status is not None else "not started"
    return Check("broker", False, f"the event broker is {shown}")


def _check_consumers(statuses: Mapping[str, ProcessStatus]) -> Check:
    errored = sorted(
        name
        for name, status in statuses.items()
        if name != BROKER_SERVICE_NAME and status is ProcessStatus.ERRORED
    )
    if not errored:
        return Check("consumers", True)
    return Check("consumers", False, f"errored: {', '.join(errored)}")


def _check_lag(
    holdings: Sequence[SourceLag] | None,
    max_lag_events: int,
    trend: LagTrend,
    holdings_error: str,
) -> Check:
    if holdings is None:
        return Check("lag", False, f"could not read the lag: {holdings_error}")
    # A holding whose lag is not known (a kind of source without a readable
    # head) is not judged: /status shows its lag as null.
    behind = [
        f"{holding.group} {source_label(holding.source)} is {holding.lag} behind"
        for holding in holdings
        if holding.lag is not None
        and holding.lag > max_lag_events
        and not trend.falling(holding)
    ]
    if not behind:
        return Check("lag", True)
    return Check(
        "lag",
        False,
        f"{'; '.join(behind)} (limit {max_lag_events}) and not falling",
    )
