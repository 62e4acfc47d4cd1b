"""``projections.bulk.copy_rows``: COPY in a batch transaction, values intact."""

from typing import Any

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from eventcomposition.consumers import PostgresCheckpointStore
from eventcomposition.projections.bulk import copy_rows

type Pool = AsyncConnectionPool[AsyncConnection[Any]]

ROWS = [
    (1, "plain", {"n": 1}),
    (2, "tab\there, newline\nthere, back\\slash", None),
    (3, None, {"text": "é \\N"}),
]


async def test_copied_rows_read_back_equal_and_roll_back_with_the_batch(
    postgres_pool: Pool,
) -> None:
    async with postgres_pool.connection() as connection:
        await connection.execute(
            "CREATE TABLE copied (seq bigint, label text, payload jsonb)"
        )
    store = PostgresCheckpointStore(postgres_pool)
    async with store.transaction() as transaction:
        await copy_rows(
            transaction,
            "copied",
            ("seq", "label", "payload"),
            [(seq, label, payload) for seq, label, payload in ROWS],
            types=("int8", "text", "jsonb"),
        )
    try:
        async with store.transaction() as transaction:
            await copy_rows(transaction, "copied", ("seq",), [(4,)])
            raise RuntimeError("the batch fails")
    except RuntimeError:
        pass
    async with postgres_pool.connection() as connection:
        cursor = await connection.execute("SELECT * FROM copied ORDER BY seq")
        assert await cursor.fetchall() == ROWS
