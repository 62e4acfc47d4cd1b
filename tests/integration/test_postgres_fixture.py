"""The throwaway PostgreSQL server and the pytest fixtures built on it."""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import port_for
import psycopg
import pytest
from psycopg import AsyncConnection
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool

from eventcomposition.schema import OWNED_TABLES
from eventcomposition.testing import (
    DATABASE_URL_VARIABLE,
    ConnectionInfo,
    PostgresBinaries,
    PostgresServer,
    PostgresServerError,
    PostgresUnavailableError,
    ThrowawayPostgres,
    postgres_server_from_environment,
)
from eventcomposition.testing.postgres import BINDIR_VARIABLE
from eventcomposition.testing.pytest_plugin import postgres_unavailable

INNER_TEST_TIMEOUT = 120


def run_inner_pytest(
    tmp_path: Path, test_source: str, environment: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """Run one test file in a separate pytest that loads the plugin with ``-p``."""
    test_file = tmp_path / "test_inner.py"
    test_file.write_text(test_source, encoding="utf-8")
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "eventcomposition.testing.pytest_plugin",
            "-p",
            "no:cacheprovider",
            "-o",
            "asyncio_default_fixture_loop_scope=function",
            "-q",
            "-rsE",
            str(test_file),
        ],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=INNER_TEST_TIMEOUT,
        check=False,
    )


def inner_environment(**overrides: str) -> dict[str, str]:
    environment = {
        name: value
        for name, value in os.environ.items()
        if name not in {"CI", DATABASE_URL_VARIABLE, BINDIR_VARIABLE}
    }
    environment.update(overrides)
    return environment


def database_names(admin: ConnectionInfo) -> set[str]:
    with psycopg.connect(admin.conninfo) as connection:
        rows = connection.execute("SELECT datname FROM pg_database").fetchall()
    return {str(row[0]) for row in rows}


@pytest.mark.parametrize("run", ["first", "second"])
def test_every_test_gets_a_fresh_migrated_database(
    run: str, postgres_database: ConnectionInfo
) -> None:
    with psycopg.connect(postgres_database.conninfo, autocommit=True) as connection:
        current = connection.execute("SELECT current_database()").fetchone()
        tables = {
            str(row[0])
            for row in connection.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            ).fetchall()
        }
        events = connection.execute("SELECT count(*) FROM events").fetchone()
        # Fails in the second run if both runs were given the same database.
        connection.execute("CREATE TABLE written_by_one_test_only (run text)")

    assert current == (postgres_database.dbname,)
    assert postgres_database.dbname.startswith("eventcomposition_test_")
    assert tables == {table.name for table in OWNED_TABLES}
    assert events == (0,)


def test_tests_using_the_fixtures_are_marked_postgres(
    request: pytest.FixtureRequest, postgres_database: ConnectionInfo
) -> None:
    assert request.node.get_closest_marker("postgres") is not None


async def test_the_pool_is_open_on_the_test_database(
    postgres_pool: AsyncConnectionPool[AsyncConnection[Any]],
    postgres_database: ConnectionInfo,
) -> None:
    async with postgres_pool.connection() as connection:
        cursor = await connection.execute("SELECT current_database()")
        row = await cursor.fetchone()

    assert not postgres_pool.closed
    assert row == (postgres_database.dbname,)


@pytest.mark.postgres
def test_the_database_and_the_template_are_dropped_afterwards(
    tmp_path: Path, postgres_server: PostgresServer
) -> None:
    names_file = tmp_path / "names.txt"
    result = run_inner_pytest(
        tmp_path,
        f"""
def test_records_names(postgres_database, postgres_template_database):
    with open({str(names_file)!r}, "w") as names:
        names.write(postgres_database.dbname + "\\n" + postgres_template_database)
""",
        inner_environment(
            **{DATABASE_URL_VARIABLE: postgres_server.connection_info.url}
        ),
    )

    assert result.returncode == 0, result.stdout + result.stderr
    database, template = names_file.read_text(encoding="utf-8").split("\n")
    remaining = database_names(postgres_server.connection_info)
    assert database not in remaining
    assert template not in remaining


def test_without_postgres_tests_skip_locally_and_fail_in_ci(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(DATABASE_URL_VARIABLE, raising=False)
    monkeypatch.setenv(BINDIR_VARIABLE, str(tmp_path / "no-postgres-here"))
    with pytest.raises(PostgresUnavailableError) as missing:
        postgres_server_from_environment()

    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=BINDIR_VARIABLE):
        postgres_unavailable(missing.value)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="PostgreSQL is required in CI"):
        postgres_unavailable(missing.value)


def test_an_unreachable_external_server_is_reported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(
        DATABASE_URL_VARIABLE,
        f"postgresql://postgres@127.0.0.1:{port_for.select_random()}/postgres",
    )

    with pytest.raises(PostgresUnavailableError, match="cannot connect to the server"):
        postgres_server_from_environment()


def ephemeral_port_range() -> range:
    """The ports Linux hands out for bind(0) and to client sockets."""
    text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text(encoding="utf-8")
    low, high = (int(part) for part in text.split())
    return range(low, high + 1)


def test_restart_keeps_data_and_port_and_stop_removes_everything(
    throwaway_postgres: ThrowawayPostgres,
) -> None:
    info = throwaway_postgres.connection_info
    # Nothing the OS gives out by itself can take the port while the server is down.
    assert info.port not in ephemeral_port_range()
    with psycopg.connect(info.conninfo, autocommit=True) as connection:
        connection.execute("CREATE TABLE kept (value text)")
        connection.execute("INSERT INTO kept VALUES ('before restart')")
    survivor = psycopg.connect(info.conninfo, autocommit=True)

    throwaway_postgres.restart()

    with pytest.raises(psycopg.OperationalError):
        survivor.execute("SELECT 1")
    survivor.close()
    assert throwaway_postgres.connection_info == info
    assert throwaway_postgres.is_running
    with psycopg.connect(info.conninfo) as connection:
        assert connection.execute("SELECT value FROM kept").fetchall() == [
            ("before restart",)
        ]

    throwaway_postgres.shutdown()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(info.conninfo, connect_timeout=5)
    throwaway_postgres.start()
    with psycopg.connect(info.conninfo) as connection:
        assert connection.execute("SELECT count(*) FROM kept").fetchone() == (1,)

    cluster = throwaway_postgres.data_dir.parent
    throwaway_postgres.stop()
    assert not cluster.exists()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(info.conninfo, connect_timeout=5)


def test_password_authentication_accepts_only_the_superuser_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # libpq would otherwise fall back to a password from the environment or a file.
    for variable in ("PGPASSWORD", "PGPASSFILE", "PGSERVICE"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("PGPASSFILE", os.devnull)
    server = ThrowawayPostgres(auth="scram-sha-256", password="s3cret: pass'word")
    try:
        server.start()
    except PostgresUnavailableError as error:
        postgres_unavailable(error)
    try:
        info = server.connection_info
        assert server.auth == "scram-sha-256"
        assert info.password == "s3cret: pass'word"
        assert "s3cret" not in repr(server) + repr(info)
        with psycopg.connect(info.conninfo, connect_timeout=5) as connection:
            rules = connection.execute(
                "SELECT DISTINCT type, auth_method FROM pg_hba_file_rules"
            ).fetchall()
        assert set(rules) == {("host", "scram-sha-256"), ("local", "trust")}

        for wrong in (replace(info, password="wrong"), replace(info, password="")):
            with pytest.raises(psycopg.OperationalError, match="password"):
                psycopg.connect(wrong.conninfo, connect_timeout=5)

        server.restart()
        with psycopg.connect(info.conninfo, connect_timeout=5) as connection:
            assert connection.execute("SELECT 1").fetchone() == (1,)
        assert not list(server.data_dir.parent.glob("*password*"))
    finally:
        server.stop()


def test_password_authentication_generates_a_password_and_trust_takes_none() -> None:
    assert ThrowawayPostgres().auth == "trust"
    assert ThrowawayPostgres().password == ""
    generated = ThrowawayPostgres(auth="scram-sha-256").password
    assert len(generated) >= 16
    assert generated != ThrowawayPostgres(auth="scram-sha-256").password
    with pytest.raises(ValueError, match="auth='scram-sha-256'"):
        ThrowawayPostgres(password="secret")
    with pytest.raises(ValueError, match="auth must be"):
        ThrowawayPostgres(auth="md5")  # type: ignore[arg-type]


def test_connection_info_quotes_credentials_and_hides_the_password() -> None:
    info = ConnectionInfo(
        host="127.0.0.1", port=6543, user="app user", password="p@ss:w/rd", dbname="db"
    )

    assert info.url == "postgresql://app%20user:p%40ss%3Aw%2Frd@127.0.0.1:6543/db"
    assert ConnectionInfo.from_url(info.url) == info
    assert conninfo_to_dict(info.conninfo) == {
        "host": "127.0.0.1",
        "port": "6543",
        "user": "app user",
        "password": "p@ss:w/rd",
        "dbname": "db",
    }
    assert "p@ss" not in repr(info)
    assert info.connection_settings().password == "p@ss:w/rd"
    assert info.for_database("other").dbname == "other"


def test_a_failing_initdb_is_reported_with_its_output_and_a_fix() -> None:
    with tempfile.TemporaryDirectory() as bindir:
        os.chmod(bindir, 0o755)
        for name in ("initdb", "pg_ctl", "postgres"):
            script = Path(bindir) / name
            script.write_text(
                "#!/bin/sh\necho 'initdb: simulated breakage' >&2\nexit 1\n",
                encoding="utf-8",
            )
            script.chmod(0o755)
        server = ThrowawayPostgres(binaries=PostgresBinaries(Path(bindir)))

        with pytest.raises(PostgresUnavailableError) as raised:
            server.start()

    message = str(raised.value)
    assert "initdb" in message
    assert "simulated breakage" in message
    assert "apt-get install -y postgresql" in message
    assert not server.is_running
    with pytest.raises(PostgresServerError):
        _ = server.data_dir


SIGTERMED_RUN = """
import time
from pathlib import Path


def test_holds_the_server(postgres_server):
    Path("server-data").write_text(str(postgres_server.data_dir))
    time.sleep({seconds})
"""


def test_a_run_ended_by_sigterm_still_stops_and_removes_its_server(
    tmp_path: Path,
) -> None:
    test_file = tmp_path / "test_inner.py"
    test_file.write_text(SIGTERMED_RUN.format(seconds=INNER_TEST_TIMEOUT))
    inner = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "eventcomposition.testing.pytest_plugin",
            "-p",
            "no:cacheprovider",
            "-q",
            str(test_file),
        ],
        cwd=tmp_path,
        env=inner_environment(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    marker = tmp_path / "server-data"
    data_dir: Path | None = None
    try:
        deadline = time.monotonic() + 60
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), "the inner run never started its server"
        data_dir = Path(marker.read_text())
        assert (data_dir / "postmaster.pid").exists()

        inner.send_signal(signal.SIGTERM)

        assert inner.wait(timeout=30) != 0
        assert not data_dir.exists(), "the server was left behind"
    finally:
        if inner.poll() is None:
            inner.kill()
            inner.wait()
        if data_dir is not None and (data_dir / "postmaster.pid").exists():
            # Left behind (the behaviour this test guards against): end that
            # server, which this test's own child started, and remove it.
            os.kill(int((data_dir / "postmaster.pid").read_text().split()[0]), 9)
        if data_dir is not None and data_dir.parent.name.startswith(
            "eventcomposition-postgres-"
        ):
            shutil.rmtree(data_dir.parent, ignore_errors=True)
