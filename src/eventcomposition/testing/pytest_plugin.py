"""pytest fixtures for tests that need PostgreSQL.

Load with ``-p eventcomposition.testing.pytest_plugin`` or, in a top-level
``conftest.py``, ``pytest_plugins = ["eventcomposition.testing.pytest_plugin"]``.

- ``postgres_server`` (session): a throwaway server, or the one named by
  ``EVENTCOMPOSITION_TEST_DATABASE_URL``. Without one the tests are skipped, except
  in CI (``CI=true`` or ``CI=1``) where they fail with the reason.
- ``postgres_template_database`` (session): the name of a database migrated with
  ``eventcomposition.schema.migrate`` once, copied by ``postgres_database``.
- ``postgres_database`` (function): a fresh, migrated database per test, dropped
  afterwards; a ``ConnectionInfo``.
- ``postgres_pool`` (function, async): an open ``AsyncConnectionPool`` on it.
- ``throwaway_postgres`` (function): a private ``ThrowawayPostgres`` for tests that
  shut down or restart the server, whatever ``postgres_server`` is (~1.5 s each).

Tests using any of them are marked ``postgres``.

A run ended by SIGTERM (a CI timeout, a supervisor) is interrupted as by Ctrl-C, so
that the fixtures' teardown still stops and removes the servers it started.
"""

import asyncio
import os
import signal
import threading
from collections.abc import AsyncIterator, Iterator
from types import FrameType
from typing import Any, NoReturn

import psycopg
import pytest
import pytest_asyncio
from psycopg import AsyncConnection, sql
from psycopg_pool import AsyncConnectionPool

from ..schema import migrate
from .postgres import (
    ConnectionInfo,
    PostgresServer,
    PostgresUnavailableError,
    ThrowawayPostgres,
    create_database,
    drop_database,
    postgres_server_from_environment,
    unique_database_name,
)

POSTGRES_MARKER = "postgres"
POSTGRES_FIXTURES = frozenset(
    {
        "postgres_server",
        "postgres_template_database",
        "postgres_database",
        "postgres_pool",
    }
)


def pytest_configure(config: pytest.Config) -> None:
    interrupt_on_sigterm()
    config.addinivalue_line(
        "markers",
        f"{POSTGRES_MARKER}: needs a real PostgreSQL server (a throwaway one unless "
        "EVENTCOMPOSITION_TEST_DATABASE_URL names one)",
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if POSTGRES_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(POSTGRES_MARKER)


def interrupt_on_sigterm() -> None:
    """Make SIGTERM interrupt the run like Ctrl-C (``KeyboardInterrupt``), so that
    fixtures are torn down; left alone when something else already handles it."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _interrupted)


def _interrupted(signum: int, frame: FrameType | None) -> NoReturn:
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


def running_in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"true", "1"}


def postgres_unavailable(error: PostgresUnavailableError) -> NoReturn:
    """Skip the current test, or fail it in CI, where PostgreSQL must be there."""
    if running_in_ci():
        pytest.fail(f"PostgreSQL is required in CI: {error}", pytrace=False)
    pytest.skip(f"no PostgreSQL server for this test: {error}")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    try:
        server = postgres_server_from_environment()
    except PostgresUnavailableError as error:
        postgres_unavailable(error)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_template_database(
    postgres_server: PostgresServer,
) -> Iterator[str]:
    admin = postgres_server.connection_info
    name = unique_database_name("eventcomposition_template")
    template = create_database(admin, name)
    try:
        # Synchronous fixtures run outside pytest-asyncio's event loop.
        asyncio.run(migrate(template.conninfo))
        # CREATE DATABASE ... TEMPLATE fails while anyone is connected to the
        # template; refusing connections keeps stray clients out.
        with psycopg.connect(admin.conninfo, autocommit=True) as connection:
            connection.execute(
                sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(
                    sql.Identifier(name)
                )
            )
        yield name
    finally:
        drop_database(admin, name)


@pytest.fixture
def postgres_database(
    postgres_server: PostgresServer,
    postgres_template_database: str,
) -> Iterator[ConnectionInfo]:
    admin = postgres_server.connection_info
    name = unique_database_name("eventcomposition_test")
    database = create_database(admin, name, template=postgres_template_database)
    try:
        yield database
    finally:
        drop_database(admin, name)


@pytest_asyncio.fixture
async def postgres_pool(
    postgres_database: ConnectionInfo,
) -> AsyncIterator[AsyncConnectionPool[AsyncConnection[Any]]]:
    pool = AsyncConnectionPool[AsyncConnection[Any]](
        postgres_database.conninfo, min_size=1, max_size=10, open=False
    )
    await pool.open(wait=True, timeout=30)
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture
def throwaway_postgres() -> Iterator[ThrowawayPostgres]:
    server = ThrowawayPostgres()
    try:
        server.start()
    except PostgresUnavailableError as error:
        postgres_unavailable(error)
    try:
        yield server
    finally:
        server.stop()
