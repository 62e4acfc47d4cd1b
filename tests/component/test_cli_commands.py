"""The inspection and schema commands, run in process through ``main``."""

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest
from logicblocks.event.processing import ServiceManager
from logicblocks.event.processing.broker import EventBrokerStorageType, EventBrokerType
from logicblocks.event.types import CategoryIdentifier
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from eventcomposition import (
    BrokerRole,
    DistributedEventBrokerSettings,
    EventRuntime,
    make_event_broker,
)
from eventcomposition.cli import main, one_line
from eventcomposition.schema.migrate import _MIGRATION_LOCK_KEY
from eventcomposition.testing.capture import CapturingSubscriber
from eventcomposition.testing.postgres import ConnectionInfo
from eventcomposition.testing.waiting import wait_until

SETTINGS_DIR = str(Path(__file__).resolve().parents[2] / "settings")
SECRET = "s3cret-Value-42"


@pytest.fixture
def database_environment(
    postgres_database: ConnectionInfo, monkeypatch: pytest.MonkeyPatch
) -> ConnectionInfo:
    values = {
        "HOST": postgres_database.host,
        "PORT": str(postgres_database.port),
        "DATABASE": postgres_database.dbname,
        "USER": postgres_database.user,
        "PASSWORD": postgres_database.password or SECRET,
    }
    for key, value in values.items():
        monkeypatch.setenv(f"EVENTCOMPOSITION_STORAGE__POSTGRES__{key}", value)
    monkeypatch.setenv("EVENTCOMPOSITION_STORAGE__TYPE", "postgres")
    return postgres_database


def test_settings_show_lists_values_and_sources_and_masks_the_password(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("EVENTCOMPOSITION_STORAGE__POSTGRES__PASSWORD", SECRET)

    status = main(
        ["settings", "show", "--env", "production", "--settings-dir", SETTINGS_DIR]
    )

    out = capsys.readouterr().out
    assert status == 0
    assert SECRET not in out
    password_line = next(
        line for line in out.splitlines() if "postgres.password" in line
    )
    assert "**********" in password_line
    assert "env EVENTCOMPOSITION_STORAGE__POSTGRES__PASSWORD" in password_line
    storage_line = next(
        line for line in out.splitlines() if line.startswith("storage.type")
    )
    assert "postgres" in storage_line
    assert "production.toml" in storage_line


def test_bad_settings_end_with_one_line_and_status_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status = main(
        ["settings", "show", "--env", "staging", "--settings-dir", SETTINGS_DIR]
    )

    err = capsys.readouterr().err
    assert status == 2
    assert err.count("\n") == 1
    assert err.startswith("eventcomposition: error: unknown environment 'staging'")


def test_one_line_joins_a_multi_line_message() -> None:
    message = "invalid settings (x):\n  - a: bad\n  - b: worse"

    assert one_line(message) == "invalid settings (x): a: bad; b: worse"


def test_db_migrate_creates_then_finds_the_schema_up_to_date(
    database_environment: ConnectionInfo, capsys: pytest.CaptureFixture[str]
) -> None:
    # The fixture's database is migrated already: a second run changes nothing.
    status = main(["db", "migrate", "--env", "test", "--settings-dir", SETTINGS_DIR])

    out = capsys.readouterr().out
    assert status == 0
    assert "is up to date: events, projections, subscribers, subscriptions" in out


def test_db_migrate_on_an_unreachable_server_says_so_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("EVENTCOMPOSITION_STORAGE__TYPE", "postgres")
    monkeypatch.setenv("EVENTCOMPOSITION_STORAGE__POSTGRES__PORT", "1")
    monkeypatch.setenv("EVENTCOMPOSITION_STORAGE__POSTGRES__CONNECT_TIMEOUT", "1")

    status = main(["db", "migrate", "--env", "test", "--settings-dir", SETTINGS_DIR])

    err = capsys.readouterr().err
    assert status == 1
    assert err.count("\n") == 1
    assert "PostgreSQL at 127.0.0.1:1/eventcomposition is unreachable" in err
    # The cause's first line, not libpq's tab-indented hint after it.
    assert "Connection refused" in err
    assert "\t" not in err


@pytest.mark.parametrize(
    "argv",
    [
        ["db", "migrate"],
        ["cluster", "status"],
        ["dead-letters", "list"],
    ],
)
def test_commands_that_need_postgres_say_so_at_once_in_memory(
    argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("EVENTCOMPOSITION_STORAGE__TYPE", raising=False)

    status = main([*argv, "--env", "development", "--settings-dir", SETTINGS_DIR])

    err = capsys.readouterr().err
    assert status == 1
    assert err.count("\n") == 1
    assert (
        f"{' '.join(argv)} needs PostgreSQL, but the 'development' settings use "
        in (err)
    )
    assert "EVENTCOMPOSITION_STORAGE__TYPE=postgres" in err
    assert "unreachable" not in err


def test_cluster_status_shows_nodes_and_the_sources_they_hold(
    database_environment: ConnectionInfo, capsys: pytest.CaptureFixture[str]
) -> None:
    asyncio.run(run_a_small_cluster_then_report(database_environment))

    out = capsys.readouterr().out
    assert "observer-1" in out
    assert "coordinator-1" in out
    assert "leading coordinator: coordinator-1" in out
    # The held source, with its lag: no checkpoint and no events yet.
    assert ["observer-1", "s-1", "orders", "-", "-", "0"] in [
        line.split() for line in out.splitlines()
    ]


def test_cluster_status_does_not_take_a_migration_for_a_leader(
    database_environment: ConnectionInfo, capsys: pytest.CaptureFixture[str]
) -> None:
    asyncio.run(report_while_a_migration_holds_its_lock(database_environment))

    out = capsys.readouterr().out
    assert "leading coordinator: none" in out


async def report_while_a_migration_holds_its_lock(database: ConnectionInfo) -> None:
    async with (
        await AsyncConnection.connect(database.conninfo) as connection,
        connection.transaction(),
    ):
        await connection.execute(
            "SELECT pg_advisory_xact_lock(%s)", [_MIGRATION_LOCK_KEY]
        )
        status = await asyncio.to_thread(
            main, ["cluster", "status", "--env", "test", "--settings-dir", SETTINGS_DIR]
        )
        assert status == 0


async def run_a_small_cluster_then_report(database: ConnectionInfo) -> None:
    fast = timedelta(milliseconds=200)
    async with AsyncConnectionPool[AsyncConnection](
        database.conninfo, min_size=1, max_size=10, open=False
    ) as pool:
        nodes = []
        for node_id, role in [
            ("observer-1", BrokerRole.OBSERVER),
            ("coordinator-1", BrokerRole.COORDINATOR),
        ]:
            broker = make_event_broker(
                node_id,
                EventBrokerType.Distributed,
                EventBrokerStorageType.Postgres,
                settings=DistributedEventBrokerSettings(
                    role=role,
                    subscriber_manager_heartbeat_interval=fast,
                    coordinator_distribution_interval=fast,
                    coordinator_leadership_attempt_interval=fast,
                    observer_synchronisation_interval=fast,
                ),
                connection_settings=database.connection_settings(),
                connection_pool=pool,
            )
            nodes.append(EventRuntime(node_id, broker, ServiceManager()))
        subscriber = CapturingSubscriber(
            "totals", "s-1", [CategoryIdentifier(category="orders")]
        )
        await nodes[0].register_subscriber(subscriber)
        for node in nodes:
            await node.start()
        try:
            await wait_until(
                lambda: subscriber.sources == [CategoryIdentifier(category="orders")]
            )
            status = await asyncio.to_thread(
                main,
                ["cluster", "status", "--env", "test", "--settings-dir", SETTINGS_DIR],
            )
            assert status == 0
        finally:
            for node in nodes:
                await node.stop()
