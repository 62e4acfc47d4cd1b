"""Opening PostgreSQL pools: retries, refusals and the idle-connection check."""

import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from typing import Any

import port_for
import pytest
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from eventcomposition.database import (
    DatabaseAuthenticationError,
    DatabaseUnavailableError,
    IdleConnectionCheck,
    connection_pool,
    wait_for_database,
)
from eventcomposition.retry import Backoff
from eventcomposition.testing.postgres import (
    ConnectionInfo,
    ThrowawayPostgres,
)

PASSWORD = "correct-Horse-7"


@pytest.fixture(scope="module")
def password_server() -> Iterator[ThrowawayPostgres]:
    with ThrowawayPostgres(auth="scram-sha-256", password=PASSWORD) as server:
        yield server


async def test_a_wrong_password_fails_at_once_without_echoing_it(
    password_server: ThrowawayPostgres,
) -> None:
    wrong = replace(password_server.connection_info, password="wrong-Password-9")

    with pytest.raises(DatabaseAuthenticationError) as raised:
        await wait_for_database(wrong.conninfo, where="test server", attempts=5)

    message = str(raised.value)
    assert "refused to authenticate" in message
    assert "password authentication failed" in message
    assert "EVENTCOMPOSITION_STORAGE__POSTGRES__PASSWORD" in message
    assert "wrong-Password-9" not in message
    assert "\n" not in message


async def test_a_missing_password_is_an_authentication_failure_at_once(
    password_server: ThrowawayPostgres,
) -> None:
    without = replace(password_server.connection_info, password="")
    started = time.monotonic()

    with pytest.raises(DatabaseAuthenticationError) as raised:
        await wait_for_database(without.conninfo, where="test server", attempts=5)

    # Retried as "unreachable", five attempts took about 9 s.
    assert time.monotonic() - started < 2
    message = str(raised.value)
    assert message.startswith("PostgreSQL at test server refused to authenticate: ")
    assert "no password supplied" in message
    assert message.endswith(
        "set the password in EVENTCOMPOSITION_STORAGE__POSTGRES__PASSWORD"
    )


async def test_the_right_password_opens_a_working_pool(
    password_server: ThrowawayPostgres,
) -> None:
    info = password_server.connection_info
    async with (
        connection_pool(info.conninfo, where="test server") as pool,
        pool.connection() as connection,
    ):
        cursor = await connection.execute("SELECT 1")
        assert await cursor.fetchone() == (1,)
    assert pool.closed


async def test_an_unreachable_server_is_retried_then_reported() -> None:
    closed = ConnectionInfo(
        host="127.0.0.1", port=port_for.select_random(), user="nobody"
    )
    attempts = 3

    with pytest.raises(DatabaseUnavailableError) as raised:
        await wait_for_database(
            closed.conninfo,
            where="127.0.0.1:closed",
            connect_timeout=1,
            attempts=attempts,
            backoff=Backoff(
                initial=timedelta(milliseconds=10), maximum=timedelta(milliseconds=20)
            ),
        )

    assert f"unreachable after {attempts} attempts" in str(raised.value)


async def test_only_connections_that_sat_idle_are_checked(
    postgres_database: ConnectionInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    checked: list[AsyncConnection[Any]] = []

    async def record(connection: AsyncConnection[Any]) -> None:
        checked.append(connection)

    monkeypatch.setattr(AsyncConnectionPool, "check_connection", record)
    connection = await AsyncConnection.connect(postgres_database.conninfo)
    try:
        eager = IdleConnectionCheck(idle_for=timedelta(0))
        lazy = IdleConnectionCheck(idle_for=timedelta(hours=1))

        await lazy.check(connection)  # never returned to the pool yet: checked
        await lazy.returned(connection)
        await lazy.check(connection)  # returned just now: not checked
        await eager.returned(connection)
        await eager.check(connection)  # idle for at least zero seconds: checked
    finally:
        await connection.close()

    assert checked == [connection, connection]
