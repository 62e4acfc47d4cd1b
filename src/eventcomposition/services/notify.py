"""Wake consumers when events arrive: LISTEN on the channel the events trigger
NOTIFYs (see ``eventcomposition.schema``).

One dedicated connection, outside the pool and in autocommit, LISTENs; each
notification names the categories one statement wrote (or the wildcard), and the
consumers holding a source in them are woken at once. Polling stays the safety net:
a notification is lost when the connection is, so after every (re)connection the
listener wakes every consumer once. The listener supervises itself: on losing its
connection it reconnects with backoff, and its ``status`` is ERRORED meanwhile.
"""

import asyncio
import contextlib
import json
from collections.abc import Collection
from datetime import timedelta
from types import TracebackType
from typing import Any, NoReturn, Protocol, Self

import psycopg
import structlog
from logicblocks.event.processing import ProcessStatus
from psycopg import AsyncConnection, sql

from ..retry import Backoff
from ..schema import NOTIFY_CHANNEL, NOTIFY_WILDCARD

logger = structlog.get_logger("eventcomposition.services")

NOTIFY_LISTENER_SERVICE_NAME = "notify-listener"
"""The listener's name among a node's service statuses."""

# PostgreSQL keeps at most 63 bytes of an application_name.
_APPLICATION_NAME_LIMIT = 63


class ConsumerWaker(Protocol):
    """What the listener wakes; ``EventRuntime`` is one."""

    def wake_consumers(self, categories: Collection[str] | None = None) -> int: ...


def categories_in(payload: str) -> frozenset[str] | None:
    """The categories a notification names, or None for "every category" (the
    wildcard, or a payload this version does not understand)."""
    if payload == NOTIFY_WILDCARD:
        return None
    try:
        decoded = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(decoded, list) or not all(isinstance(c, str) for c in decoded):
        return None
    return frozenset(decoded)


class NotifyListener:
    """LISTENs on one dedicated connection and wakes the consumers of ``target``.

    An async context manager: entering starts the listener and waits for its first
    connection attempt (whether or not it succeeds, so that a node starts while
    PostgreSQL is away and the listener catches up); exiting stops it and closes
    the connection. ``conninfo`` is a libpq connection string or URL.
    """

    def __init__(
        self,
        conninfo: str,
        target: ConsumerWaker,
        *,
        node_id: str,
        channel: str = NOTIFY_CHANNEL,
        backoff: Backoff | None = None,
        connect_timeout: timedelta = timedelta(seconds=5),
        health_check_interval: timedelta = timedelta(seconds=30),
    ) -> None:
        self._conninfo = conninfo
        self._target = target
        self._node_id = node_id
        self._channel = channel
        self._backoff = backoff or Backoff(
            initial=timedelta(milliseconds=200), maximum=timedelta(seconds=10)
        )
        self._connect_timeout = connect_timeout
        self._health_check_interval = health_check_interval
        self._status = ProcessStatus.INITIALISED
        self._task: asyncio.Task[None] | None = None
        self._first_attempt = asyncio.Event()
        self._logger = logger.bind(node_id=node_id, channel=channel)
        self.connections = 0
        """How many times the listener has connected and started listening."""

    @property
    def name(self) -> str:
        return NOTIFY_LISTENER_SERVICE_NAME

    @property
    def status(self) -> ProcessStatus:
        """RUNNING while listening, ERRORED while disconnected, STOPPED after exit."""
        return self._status

    @property
    def application_name(self) -> str:
        """How the listener's connection shows in ``pg_stat_activity``."""
        return f"eventcomposition-notify:{self._node_id}"[:_APPLICATION_NAME_LIMIT]

    async def __aenter__(self) -> Self:
        if self._task is not None:
            raise RuntimeError("a NotifyListener can be entered only once")
        self._status = ProcessStatus.STARTING
        self._task = asyncio.create_task(self._supervise(), name=self.name)
        await self._first_attempt.wait()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._status = ProcessStatus.STOPPING
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._status = ProcessStatus.STOPPED
        self._logger.info("notify-listener.stopped")

    async def _supervise(self) -> None:
        failures = 0
        while True:
            try:
                await self._listen()
            except Exception as error:
                # A connection that was listening starts the count afresh.
                listening = self._status is ProcessStatus.RUNNING
                failures = 1 if listening else failures + 1
                self._status = ProcessStatus.ERRORED
                delay = self._backoff.delay(failures)
                self._logger.warning(
                    "notify-listener.disconnected",
                    error=_one_line(error),
                    consecutive_failures=failures,
                    retry_in_seconds=delay.total_seconds(),
                )
            finally:
                self._first_attempt.set()
            await asyncio.sleep(delay.total_seconds())

    async def _listen(self) -> NoReturn:
        connection = await AsyncConnection.connect(
            self._conninfo,
            autocommit=True,
            application_name=self.application_name,
            connect_timeout=max(1, round(self._connect_timeout.total_seconds())),
        )
        async with connection:
            await connection.execute(
                sql.SQL("LISTEN {}").format(sql.Identifier(self._channel))
            )
            self.connections += 1
            self._status = ProcessStatus.RUNNING
            self._first_attempt.set()
            self._logger.info("notify-listener.listening", connection=self.connections)
            # Notifications sent while we were not listening are lost: catch up.
            self._target.wake_consumers()
            await self._receive(connection)

    async def _receive(self, connection: AsyncConnection[Any]) -> NoReturn:
        """Wake consumers for each notification until the connection fails."""
        interval = self._health_check_interval.total_seconds()
        while True:
            async for notify in connection.notifies(timeout=interval):
                self._target.wake_consumers(categories_in(notify.payload))
            # A connection cut without a word (no FIN, no RST) only shows when used.
            async with asyncio.timeout(self._connect_timeout.total_seconds()):
                await connection.execute("SELECT 1")


def _one_line(error: BaseException) -> str:
    text = str(error).strip()
    if isinstance(error, psycopg.Error) and text:
        return text.splitlines()[0]
    return text.splitlines()[0] if text else repr(error)
