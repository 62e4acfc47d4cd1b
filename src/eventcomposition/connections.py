"""Pooled PostgreSQL connections in autocommit, for single statements.

A pool connection is not in autocommit: psycopg sends ``BEGIN`` before the first
statement and the pool ``COMMIT`` when it is returned, three round trips where one
does. For a statement that stands alone (a heartbeat, a read, a claim renewal),
``autocommitting`` lends the connection in autocommit instead (a client-side switch
in psycopg 3: no statement is sent) and switches it back before it returns to the
pool. ``AutocommitConnections`` does the same for code that takes a pool and calls
its ``connection()`` (logicblocks' state stores).
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
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
