"""What ``eventcomposition run`` checks and says before its node starts."""

from pathlib import Path

from psycopg import AsyncConnection
from structlog.testing import capture_logs

from eventcomposition.cli.run import migrate_before_start, warn_if_node_id_in_use
from eventcomposition.settings import EventCompositionSettings, load_settings
from eventcomposition.testing.containers import postgres_overrides
from eventcomposition.testing.postgres import ConnectionInfo

SETTINGS_DIR = Path(__file__).resolve().parents[2] / "settings"
APP = "eventcomposition.containers:EventRuntimeContainer"


def settings_on(database: ConnectionInfo, node_id: str) -> EventCompositionSettings:
    return load_settings(
        "test",
        settings_dir=SETTINGS_DIR,
        node={"id": node_id},
        **postgres_overrides(database),
    )


async def heartbeat(database: ConnectionInfo, node_id: str, seconds_ago: int) -> None:
    async with await AsyncConnection.connect(database.conninfo) as connection:
        await connection.execute(
            "INSERT INTO subscribers "
            '("group", id, node_id, subscription_requests, last_seen) '
            "VALUES ('g', %s, %s, '[]', now() - make_interval(secs => %s))",
            [f"{node_id}-subscriber", node_id, seconds_ago],
        )


async def test_a_node_id_seen_recently_is_warned_about(
    postgres_database: ConnectionInfo,
) -> None:
    await heartbeat(postgres_database, "twin", seconds_ago=2)

    with capture_logs() as logs:
        await warn_if_node_id_in_use(settings_on(postgres_database, "twin"))

    [warning] = [log for log in logs if log["event"] == "node.id-in-use"]
    assert warning["log_level"] == "warning"
    assert "a node with id 'twin' heartbeated" in warning["message"]
    assert "give each node its own --node-id" in warning["message"]


async def test_a_new_node_id_or_a_long_gone_one_is_not_warned_about(
    postgres_database: ConnectionInfo,
) -> None:
    await heartbeat(postgres_database, "gone", seconds_ago=3600)

    with capture_logs() as logs:
        await warn_if_node_id_in_use(settings_on(postgres_database, "gone"))
        await warn_if_node_id_in_use(settings_on(postgres_database, "fresh"))

    assert [log for log in logs if log["event"] == "node.id-in-use"] == []


async def test_run_migrate_logs_what_it_migrated(
    postgres_database: ConnectionInfo,
) -> None:
    with capture_logs() as logs:
        await migrate_before_start(APP, settings_on(postgres_database, "n1"))

    [migrated] = [log for log in logs if log["event"] == "node.migrated"]
    assert migrated["database"].endswith(postgres_database.dbname)
    assert migrated["created"] == []
    assert migrated["up_to_date"] is True
