"""Inputs a newcomer tried that used to end in a traceback, as processes."""

import asyncio
import dataclasses
import subprocess
import sys
from collections.abc import Iterator
from uuid import uuid4

import pytest
from psycopg import AsyncConnection, sql

from eventcomposition.testing.postgres import ConnectionInfo
from eventcomposition.testing.processes import (
    node_environment,
    run_command,
    run_to_completion,
)

COMMAND = [sys.executable, "-m", "eventcomposition"]


def with_closed_output(argv: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run ``argv`` with its standard output's reader gone before it writes
    (``... | head -0``); its status and standard error."""
    process = subprocess.Popen(
        argv,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None
    process.stdout.close()
    _, err = process.communicate(timeout=60)
    return process.returncode, err.decode()


def test_settings_show_into_a_closed_pipe_ends_quietly() -> None:
    status, err = with_closed_output([*COMMAND, "settings", "show"], node_environment())

    assert (status, err) == (0, "")


def test_publish_into_a_closed_pipe_ends_quietly_having_published(
    postgres_database: ConnectionInfo,
) -> None:
    status, err = with_closed_output(
        [
            *COMMAND,
            "publish",
            "--category",
            "orders",
            "--stream",
            "c-1",
            "--name",
            "placed",
        ],
        node_environment(postgres_database, log_level="WARNING"),
    )

    assert (status, err) == (0, "")


@pytest.mark.parametrize(
    ("app", "expected"),
    [
        ("json:loads", "--app 'json:loads' failed when called: TypeError"),
        ("json:dumps", "--app 'json:dumps' failed when called"),
        ("json:JSONDecoder", "is neither an EventRuntimeContainer subclass"),
        ("os.path:sep", "is neither an EventRuntimeContainer subclass"),
        ("this.is.not.there:X", "'this' is a module, not a package"),
        ("no_such_module_here:X", "no module named 'no_such_module_here'"),
    ],
)
def test_a_bad_app_is_one_line_without_running_anything_else(
    app: str, expected: str
) -> None:
    completed = run_to_completion(
        run_command(app=app), env=node_environment(), timeout=60
    )

    assert completed.returncode == 1
    assert completed.stdout == []  # e.g. not the Zen of Python
    assert len(completed.stderr) == 1, completed.stderr
    assert completed.stderr[0].startswith("eventcomposition: error: ")
    assert expected in completed.stderr[0]


@pytest.fixture
def unprivileged(postgres_database: ConnectionInfo) -> Iterator[ConnectionInfo]:
    """A login role of the test server with no privilege on any table."""
    role = f"newcomer_{uuid4().hex[:8]}"

    async def execute(statement: sql.Composed) -> None:
        async with await AsyncConnection.connect(
            postgres_database.conninfo, autocommit=True
        ) as connection:
            await connection.execute(statement)

    asyncio.run(execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role))))
    try:
        yield dataclasses.replace(postgres_database, user=role, password="")
    finally:
        asyncio.run(execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role))))


def test_cluster_status_as_a_role_without_privileges_says_what_to_grant(
    unprivileged: ConnectionInfo,
) -> None:
    completed = run_to_completion(
        [*COMMAND, "cluster", "status"], env=node_environment(unprivileged)
    )

    assert completed.returncode == 1
    assert len(completed.stderr) == 1, completed.stderr
    assert "PostgreSQL refused: permission denied for table" in completed.stderr[0]
    assert "needs SELECT, INSERT, UPDATE and DELETE" in completed.stderr[0]


def test_run_as_a_role_without_privileges_stops_with_what_it_lacks(
    unprivileged: ConnectionInfo,
) -> None:
    completed = run_to_completion(
        run_command(
            app="eventcomposition.containers:EventRuntimeContainer",
            node_id="n1",
        ),
        env=node_environment(
            unprivileged, settings={"node.role": "observer"}, log_level="WARNING"
        ),
        timeout=60,
    )

    assert completed.returncode == 1
    errors = [line for line in completed.stderr if "eventcomposition: error" in line]
    assert len(errors) == 1, completed.stderr
    assert f"the PostgreSQL role '{unprivileged.user}'" in errors[0]
    assert "lacks SELECT, INSERT on events" in errors[0]
    assert not any("Traceback" in line for line in completed.stderr)
