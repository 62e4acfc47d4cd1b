"""Pooled PostgreSQL connections in autocommit, for single statements.

A pool connection is not in autocommit: psycopg sends ``BEGIN`` before the first
statement and the pool ``COMMIT`` when it is returned, three round trips where one
does. For a statement that stands alone (a heartbeat, a read, a claim renewal),
``autocommitting`` lends the connection in autocommit instead (a client-side switch
in psycopg 3: no statement is sent) and switches it back before it returns to the
pool. ``AutocommitConnections`` does the same for code that takes a pool and calls
its ``connection()`` (logicblocks' state stores).

``ConnectionTimeouts`` bounds what a lost peer holds up, as libpq connection
parameters for both ends.
"""

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from psycopg import AsyncConnection
from psycopg.pq import TransactionStatus
from psycopg_pool import AsyncConnectionPool

type Pool = AsyncConnectionPool[AsyncConnection[Any]]


@asynccontextmanager
async def autocommitting(pool: Pool) -> AsyncIterator[AsyncConnection[Any]]:
    """A pooled connection whose statements commit each on their own."""
    async with pool.connection() as connection:
        was = connection.autocommit
        await connection.set_autocommit(True)
        try:
            yield connection
        finally:
            # Pooled connections are shared: leave a sound one as it was (a broken
            # one is discarded by the pool).
            if connection.info.transaction_status is TransactionStatus.IDLE:
                await connection.set_autocommit(was)


class AutocommitConnections:
    """Stands in for ``pool`` where only ``connection()`` is called: lends its
    connections in autocommit (see ``autocommitting``)."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    def connection(self) -> Any:
        """An async context manager giving a connection in autocommit."""
        return autocommitting(self.pool)


def _milliseconds(interval: timedelta) -> int:
    return max(1, math.ceil(interval.total_seconds() * 1000))


def _whole_seconds(interval: timedelta) -> int:
    return max(1, math.ceil(interval.total_seconds()))


@dataclass(frozen=True)
class ConnectionTimeouts:
    """How long a lost client or a lost server can hold anything up.

    Without them a node cut off from PostgreSQL (a partition, a frozen process)
    between a statement and its COMMIT leaves its backend ``idle in transaction``
    with its row locks (a claim's, say) until the server's TCP gives up, minutes
    to hours later; and the node's own calls wait as long for an answer that
    cannot come.

    - ``idle_in_transaction``: the server ends a session idle that long inside a
      transaction (``idle_in_transaction_session_timeout``), rolling it back and
      freeing its locks. Keep it at most the claim lease. ``None``: no limit.
    - ``tcp_user_timeout``: both ends drop a connection whose sent data stays
      unacknowledged that long (libpq's and the server's ``tcp_user_timeout``).
    - ``keepalives_idle``, ``keepalives_interval``, ``keepalives_count``: TCP
      keepalives on both ends, so a connection waiting for an answer from a peer
      that is gone fails after about idle + interval * count.
    """

    idle_in_transaction: timedelta | None = timedelta(seconds=5)
    tcp_user_timeout: timedelta = timedelta(seconds=5)
    keepalives_idle: timedelta = timedelta(seconds=2)
    keepalives_interval: timedelta = timedelta(seconds=1)
    keepalives_count: int = 3

    def connection_kwargs(self) -> dict[str, Any]:
        """libpq connection parameters: the client's side, and the server's side
        as ``options`` (settings every user may change for their own session)."""
        idle = _whole_seconds(self.keepalives_idle)
        interval = _whole_seconds(self.keepalives_interval)
        server = {
            "tcp_user_timeout": _milliseconds(self.tcp_user_timeout),
            "tcp_keepalives_idle": idle,
            "tcp_keepalives_interval": interval,
            "tcp_keepalives_count": self.keepalives_count,
        }
        if self.idle_in_transaction is not None:
            server["idle_in_transaction_session_timeout"] = _milliseconds(
                self.idle_in_transaction
            )
        return {
            "keepalives": 1,
            "keepalives_idle": idle,
            "keepalives_interval": interval,
            "keepalives_count": self.keepalives_count,
            "tcp_user_timeout": _milliseconds(self.tcp_user_timeout),
            "options": " ".join(f"-c {name}={value}" for name, value in server.items()),
        }
