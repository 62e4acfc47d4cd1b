"""Opening a PostgreSQL connection pool, retrying while the server is unreachable."""

import asyncio
import time
import weakref
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import psycopg
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from ._lazy import lazy_logger
from .connections import ConnectionTimeouts
from .errors import EventCompositionError
from .retry import Backoff
from .settings.variables import PASSWORD_VARIABLE

__all__ = [
    "ConnectionTimeouts",
    "DatabaseAuthenticationError",
    "DatabaseUnavailableError",
    "IdleConnectionCheck",
    "PostgresDatabase",
    "connection_pool",
    "probe",
    "wait_for_database",
]

logger = lazy_logger("eventcomposition.database")

# SQLSTATE classes that no retry can fix: bad credentials (28) and a missing
# database (3D).
_AUTHENTICATION_SQLSTATE_CLASS = "28"
_FATAL_SQLSTATE_CLASSES = (_AUTHENTICATION_SQLSTATE_CLASS, "3D")
# libpq's own refusals carry no SQLSTATE: a server that asks for a password the
# client does not have ("fe_sendauth: no password supplied") is one.
_AUTHENTICATION_MESSAGES = (
    "password authentication failed",
    "no password supplied",
    "authentication failed",
)
_FATAL_MESSAGES = (*_AUTHENTICATION_MESSAGES, "does not exist")


class DatabaseUnavailableError(EventCompositionError):
    """PostgreSQL could not be reached, or refused the connection."""


class DatabaseAuthenticationError(DatabaseUnavailableError):
    """PostgreSQL refused the user or the password (or asked for a missing one)."""


class DatabasePrivilegeError(EventCompositionError):
    """The role connects, but may not use tables the node needs."""


def first_line(error: BaseException) -> str:
    """The first non-empty line of ``error``'s message, stripped (libpq's messages
    go on with hints on tab-indented lines)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else repr(error)


async def missing_privileges(
    connection: AsyncConnection[Any], required: Mapping[str, Sequence[str]]
) -> dict[str, list[str]]:
    """The privileges of ``required`` (table -> privileges) the connected role lacks.

    Tables that do not exist are left out: using them fails with its own message.
    """
    missing: dict[str, list[str]] = {}
    for table, privileges in required.items():
        cursor = await connection.execute(
            "SELECT p FROM unnest(%s::text[]) AS p "
            "WHERE to_regclass(quote_ident(%s)) IS NOT NULL "
            "AND NOT has_table_privilege(quote_ident(%s), p)",
            [list(privileges), table, table],
        )
        lacking = [row[0] for row in await cursor.fetchall()]
        if lacking:
            missing[table] = lacking
    return missing


async def check_privileges(
    conninfo: str,
    required: Mapping[str, Sequence[str]],
    *,
    where: str,
    connect_timeout: int = 5,
) -> None:
    """Raise ``DatabasePrivilegeError`` naming what the role lacks, if anything."""
    async with await AsyncConnection.connect(
        conninfo, connect_timeout=connect_timeout
    ) as connection:
        missing = await missing_privileges(connection, required)
        user = connection.info.user
    if missing:
        lacking = "; ".join(
            f"{', '.join(privileges)} on {table}"
            for table, privileges in missing.items()
        )
        raise DatabasePrivilegeError(
            f"the PostgreSQL role {user!r} at {where} lacks {lacking}; grant them "
            "(or connect as the role that ran `eventcomposition db migrate`)"
        )


async def probe(conninfo: str, *, connect_timeout: int) -> None:
    """Open and close one connection; raises psycopg's error when that fails."""
    connection = await AsyncConnection.connect(
        conninfo, connect_timeout=connect_timeout
    )
    await connection.close()


def _is_fatal(error: psycopg.Error) -> bool:
    sqlstate = error.sqlstate or ""
    if sqlstate.startswith(_FATAL_SQLSTATE_CLASSES):
        return True
    return any(text in str(error) for text in _FATAL_MESSAGES)


def _is_authentication_failure(error: psycopg.Error) -> bool:
    sqlstate = error.sqlstate or ""
    if sqlstate.startswith(_AUTHENTICATION_SQLSTATE_CLASS):
        return True
    return any(text in str(error) for text in _AUTHENTICATION_MESSAGES)


async def wait_for_database(
    conninfo: str,
    *,
    where: str,
    connect_timeout: int = 5,
    attempts: int = 5,
    backoff: Backoff | None = None,
) -> None:
    """Return once PostgreSQL accepts a connection; retry with backoff until then.

    Fails at once on errors no retry can fix: a missing or wrong password with a
    ``DatabaseAuthenticationError``, an unknown database with a
    ``DatabaseUnavailableError``. Other errors are retried, and after ``attempts``
    tries raise ``DatabaseUnavailableError``. Messages name ``where`` (host, port,
    database), never the password.
    """
    delays = backoff or Backoff(initial=timedelta(milliseconds=500))
    for attempt in range(1, attempts + 1):
        try:
            await probe(conninfo, connect_timeout=connect_timeout)
            return
        except psycopg.Error as error:
            reason = first_line(error)
            if _is_authentication_failure(error):
                raise DatabaseAuthenticationError(
                    f"PostgreSQL at {where} refused to authenticate: {reason}; check "
                    f"storage.postgres.user and set the password in {PASSWORD_VARIABLE}"
                ) from None
            if _is_fatal(error):
                raise DatabaseUnavailableError(
                    f"PostgreSQL at {where} refused the connection: {reason}; check "
                    f"the storage.postgres settings (the password comes from "
                    f"{PASSWORD_VARIABLE})"
                ) from None
            if attempt == attempts:
                raise DatabaseUnavailableError(
                    f"PostgreSQL at {where} is unreachable after {attempts} attempts: "
                    f"{reason}; is the server running and are storage.postgres.host "
                    "and port right?"
                ) from None
            delay = delays.delay(attempt)
            await logger.awarning(
                "database.unreachable",
                where=where,
                attempt=attempt,
                retry_in_seconds=delay.total_seconds(),
                reason=reason,
            )
            await asyncio.sleep(delay.total_seconds())


class IdleConnectionCheck:
    """Checks a pooled connection before use only if it sat idle for a while.

    Checking every checkout costs a round trip per query (measured: about a quarter
    of a busy node's time); a connection returned moments ago is as good as checked.
    After an outage longer than ``idle_for`` every connection is checked again.
    """

    def __init__(self, idle_for: timedelta = timedelta(seconds=1)) -> None:
        self._idle_for = idle_for.total_seconds()
        self._returned_at: weakref.WeakKeyDictionary[AsyncConnection[Any], float] = (
            weakref.WeakKeyDictionary()
        )

    async def returned(self, connection: AsyncConnection[Any]) -> None:
        self._returned_at[connection] = time.monotonic()

    async def check(self, connection: AsyncConnection[Any]) -> None:
        returned_at = self._returned_at.get(connection)
        if returned_at is None or time.monotonic() - returned_at >= self._idle_for:
            await AsyncConnectionPool.check_connection(connection)


class PostgresDatabase:
    """A PostgreSQL connection pool, created closed and opened on entry.

    The pool exists from the start, so the objects that use it (event store,
    broker state stores) can be built before any connection is made; entering
    waits for the server (with retries) and opens it, exiting closes it. The pool
    is bound to the event loop that opens it: use it from services that run on the
    main thread only.
    """

    def __init__(
        self,
        conninfo: str,
        *,
        where: str,
        min_size: int = 1,
        max_size: int = 10,
        connect_timeout: int = 5,
        attempts: int = 5,
        required_privileges: Mapping[str, Sequence[str]] | None = None,
        timeouts: ConnectionTimeouts | None = None,
    ) -> None:
        """``timeouts`` bound what a lost peer holds up (``ConnectionTimeouts()``
        by default); they apply to every pooled connection."""
        self._conninfo = conninfo
        self._required_privileges = required_privileges or {}
        self.where = where
        self._min_size = min_size
        self._connect_timeout = connect_timeout
        self._attempts = attempts
        idle_check = IdleConnectionCheck()
        self.pool = AsyncConnectionPool[AsyncConnection[Any]](
            conninfo,
            min_size=min_size,
            max_size=max_size,
            kwargs={
                "connect_timeout": connect_timeout,
                **(timeouts or ConnectionTimeouts()).connection_kwargs(),
            },
            # After a server restart the pooled connections are dead: check the
            # ones that sat idle before handing them out, so nodes carry on
            # instead of failing once per connection.
            check=idle_check.check,
            reset=idle_check.returned,
            # How long a caller waits for a free connection: during an outage,
            # work (a broker unregistering on its way out, say) fails after this
            # instead of psycopg_pool's default of 30 s.
            timeout=float(connect_timeout),
            # psycopg_pool retries a failed connection with a doubling delay and
            # no cap until it gives up: after the server refused connections for
            # a minute (its slots taken, say), the pool would wait another minute
            # before trying again. Giving up after connect_timeout starts a new
            # attempt at the next demand, so a pool tries every couple of seconds.
            reconnect_timeout=float(connect_timeout),
            open=False,
            name=f"eventcomposition {where}",
        )

    async def __aenter__(self) -> AsyncConnectionPool[AsyncConnection[Any]]:
        await wait_for_database(
            self._conninfo,
            where=self.where,
            connect_timeout=self._connect_timeout,
            attempts=self._attempts,
        )
        if self._required_privileges:
            await check_privileges(
                self._conninfo,
                self._required_privileges,
                where=self.where,
                connect_timeout=self._connect_timeout,
            )
        await self.pool.open(
            wait=self._min_size > 0, timeout=self._connect_timeout * self._attempts
        )
        return self.pool

    async def __aexit__(self, *_: object) -> None:
        await self.pool.close()


@asynccontextmanager
async def connection_pool(
    conninfo: str,
    *,
    where: str,
    min_size: int = 1,
    max_size: int = 10,
    connect_timeout: int = 5,
    attempts: int = 5,
    timeouts: ConnectionTimeouts | None = None,
) -> AsyncIterator[AsyncConnectionPool[AsyncConnection[Any]]]:
    """An open pool, once the server answers; closed on exit."""
    database = PostgresDatabase(
        conninfo,
        where=where,
        min_size=min_size,
        max_size=max_size,
        connect_timeout=connect_timeout,
        attempts=attempts,
        timeouts=timeouts,
    )
    async with database as pool:
        yield pool
