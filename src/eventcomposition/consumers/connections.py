"""Pooled PostgreSQL connections for statements that need no transaction."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from psycopg import AsyncConnection
from psycopg.pq import TransactionStatus
from psycopg_pool import AsyncConnectionPool

type Pool = AsyncConnectionPool[AsyncConnection[Any]]


@asynccontextmanager
async def autocommitting(pool: Pool) -> AsyncIterator[AsyncConnection[Any]]:
    """A pooled connection whose statements commit each on their own: one round
    trip per statement, where psycopg would send BEGIN and the pool COMMIT too."""
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
