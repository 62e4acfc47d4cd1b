from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from eventcomposition.settings import (
    SettingsError,
    SettingSource,
    load_settings,
    settings_with_sources,
)

type WriteSettings = Callable[[Mapping[str, str]], Path]

PASSWORD = "correct-horse-battery-staple"


def by_key(rows: list[SettingSource]) -> dict[str, SettingSource]:
    return {row.key: row for row in rows}


def test_the_password_is_hidden_in_repr_str_and_json(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("EVENTCOMPOSITION_STORAGE__POSTGRES__PASSWORD", PASSWORD)

    settings = load_settings()

    assert PASSWORD not in repr(settings)
    assert PASSWORD not in str(settings)
    assert PASSWORD not in settings.model_dump_json()
    assert PASSWORD not in repr(settings.storage.postgres)
    assert PASSWORD not in repr(settings.storage.postgres.connection_settings())


def test_the_connection_edge_reveals_the_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("EVENTCOMPOSITION_STORAGE__POSTGRES__PASSWORD", PASSWORD)
    postgres = load_settings(
        storage={"postgres": {"host": "db", "port": 6543, "connect_timeout": 3}}
    ).storage.postgres

    connection = postgres.connection_settings()

    assert (connection.host, connection.port, connection.dbname, connection.user) == (
        "db",
        6543,
        "eventcomposition",
        "eventcomposition",
    )
    assert connection.password == PASSWORD
    assert postgres.conninfo() == (
        "host=db port=6543 dbname=eventcomposition user=eventcomposition "
        f"password={PASSWORD} connect_timeout=3"
    )


def test_without_a_password_the_connection_has_none() -> None:
    postgres = load_settings().storage.postgres

    assert "password" not in postgres.conninfo()
    assert postgres.connection_settings().password == ""


def test_each_key_reports_the_highest_source_that_set_it(
    write_settings: WriteSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = write_settings(
        {
            "base": """
                [storage.postgres]
                host = "db.internal"
                port = 5433
                user = "events"
                database = "events"
            """,
            "staging": """
                [storage.postgres]
                port = 5434
                user = "staging"
                database = "staging"
            """,
        }
    )
    monkeypatch.setenv("EVENTCOMPOSITION_STORAGE__POSTGRES__USER", "from-env")
    monkeypatch.setenv("eventcomposition_storage__postgres__database", "env-db")
    monkeypatch.setenv("EVENTCOMPOSITION_STORAGE__POSTGRES__PASSWORD", PASSWORD)

    rows = by_key(
        settings_with_sources(
            "staging",
            settings_dir=directory,
            storage={"postgres": {"database": "argument-db"}},
        )
    )

    assert rows["environment"] == ("environment", "staging", "argument")
    assert rows["storage.type"] == ("storage.type", "memory", "default")
    assert rows["storage.postgres.host"] == (
        "storage.postgres.host",
        "db.internal",
        str(directory / "base.toml"),
    )
    assert rows["storage.postgres.port"] == (
        "storage.postgres.port",
        "5434",
        str(directory / "staging.toml"),
    )
    assert rows["storage.postgres.user"] == (
        "storage.postgres.user",
        "from-env",
        "env EVENTCOMPOSITION_STORAGE__POSTGRES__USER",
    )
    assert rows["storage.postgres.database"] == (
        "storage.postgres.database",
        "argument-db",
        "argument",
    )
    assert rows["storage.postgres.password"] == (
        "storage.postgres.password",
        "**********",
        "env EVENTCOMPOSITION_STORAGE__POSTGRES__PASSWORD",
    )
    assert all(PASSWORD not in row.value for row in rows.values())


def test_every_leaf_is_reported_once_and_readably() -> None:
    rows = settings_with_sources(node={"id": "node-1"}, broker={"type": "singleton"})
    keys = [row.key for row in rows]

    assert len(keys) == len(set(keys))
    assert {"node.id", "storage.postgres.port", "logging.format"} <= set(keys)
    values = {row.key: row.value for row in rows}
    assert values["node.id"] == "node-1"
    assert values["node.role"] == "full"
    assert values["broker.type"] == "singleton"
    assert values["broker.retry_initial_delay"] == "0.5s"
    assert values["broker.coordinator_leadership_max_duration"] == "900s"
    assert values["storage.postgres.password"] == "(not set)"


def test_an_argument_replacing_a_section_is_the_source_of_its_keys() -> None:
    settings = load_settings()

    rows = by_key(settings_with_sources(logging=settings.logging))

    assert rows["logging.level"].source == "argument"
    assert rows["logging.format"].source == "argument"


def test_the_environment_variable_is_reported_as_the_source_of_the_environment(
    write_settings: WriteSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = write_settings({"test": ""})
    monkeypatch.setenv("EVENTCOMPOSITION_ENV", "test")

    rows = by_key(settings_with_sources(settings_dir=directory))

    assert rows["environment"].source == "env EVENTCOMPOSITION_ENV"


def test_the_report_fails_as_loading_does(write_settings: WriteSettings) -> None:
    directory = write_settings({"base": "[storage.postgres]\nport = 0\n"})

    with pytest.raises(SettingsError, match=r"storage\.postgres\.port"):
        settings_with_sources(settings_dir=directory)
