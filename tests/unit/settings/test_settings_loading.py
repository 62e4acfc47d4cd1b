import dataclasses
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import pytest
from logicblocks.event.processing.broker.strategies.distributed import (
    DistributedEventBrokerSettings,
)
from logicblocks.event.processing.broker.strategies.singleton import (
    SingletonEventBrokerSettings,
)

from eventcomposition.broker import BrokerRole
from eventcomposition.settings import (
    EventCompositionSettings,
    SettingsError,
    load_settings,
)

type WriteSettings = Callable[[Mapping[str, str]], Path]


def test_without_a_settings_folder_the_model_defaults_apply() -> None:
    settings = load_settings()

    assert settings.environment == "development"
    assert settings.storage.type == "memory"
    assert settings.node.role is BrokerRole.FULL
    assert settings.logging.level == "INFO"
    assert settings.consumers.poll_interval == timedelta(seconds=1)


def test_broker_defaults_are_those_of_logicblocks() -> None:
    broker = load_settings().broker

    for field in dataclasses.fields(DistributedEventBrokerSettings):
        expected = getattr(DistributedEventBrokerSettings(), field.name)
        assert getattr(broker, field.name) == expected, field.name
    expected_distribution = SingletonEventBrokerSettings().distribution_interval
    assert broker.distribution_interval == expected_distribution


def test_each_source_overrides_the_one_below(
    write_settings: WriteSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = write_settings(
        {
            "base": """
                [logging]
                level = "DEBUG"
                format = "json"
                [consumers]
                error_policy = "retry"
                isolation_mode = "shared_thread"
                poll_interval = 4
            """,
            "staging": """
                [consumers]
                error_policy = "raise"
                isolation_mode = "dedicated_thread"
                poll_interval = 3
            """,
        }
    )
    monkeypatch.setenv("EVENTCOMPOSITION_CONSUMERS__ISOLATION_MODE", "main_thread")
    monkeypatch.setenv("EVENTCOMPOSITION_CONSUMERS__POLL_INTERVAL", "2")

    settings = load_settings(
        "staging", settings_dir=directory, consumers={"poll_interval": 1}
    )

    assert settings.logging.level == "DEBUG"  # base only
    assert settings.consumers.error_policy == "raise"  # environment file over base
    assert settings.consumers.isolation_mode == "main_thread"  # variable
    assert settings.consumers.poll_interval == timedelta(seconds=1)  # argument


def test_an_overlay_merges_into_the_tables_below(write_settings: WriteSettings) -> None:
    directory = write_settings(
        {
            "base": """
                [storage.postgres]
                host = "db.internal"
                port = 5432
                user = "events"
            """,
            "staging": """
                [storage.postgres]
                port = 6543
            """,
        }
    )

    postgres = load_settings("staging", settings_dir=directory).storage.postgres

    assert (postgres.host, postgres.port, postgres.user) == (
        "db.internal",
        6543,
        "events",
    )


def test_arguments_merge_into_the_tables_below(write_settings: WriteSettings) -> None:
    directory = write_settings(
        {"base": '[storage.postgres]\nhost = "db.internal"\nport = 5432\n'}
    )

    settings = load_settings(settings_dir=directory, storage={"postgres": {"port": 1}})

    assert settings.storage.postgres.host == "db.internal"
    assert settings.storage.postgres.port == 1


def test_nested_environment_variables_set_nested_keys(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("EVENTCOMPOSITION_STORAGE__POSTGRES__PORT", "6543")
    monkeypatch.setenv("EVENTCOMPOSITION_STORAGE__POSTGRES__PASSWORD", "s3cret")
    monkeypatch.setenv("EVENTCOMPOSITION_NODE__ROLE", "observer")
    monkeypatch.setenv(
        "eventcomposition_broker__coordinator_distribution_interval", "0.25"
    )
    monkeypatch.setenv(
        "EVENTCOMPOSITION_BROKER__OBSERVER_SYNCHRONISATION_INTERVAL", "PT2S"
    )

    settings = load_settings()

    assert settings.storage.postgres.port == 6543
    password = settings.storage.postgres.password
    assert password is not None
    assert password.get_secret_value() == "s3cret"
    assert settings.node.role is BrokerRole.OBSERVER
    assert settings.broker.coordinator_distribution_interval == timedelta(seconds=0.25)
    assert settings.broker.observer_synchronisation_interval == timedelta(seconds=2)


def test_empty_environment_variables_are_ignored(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("EVENTCOMPOSITION_LOGGING__LEVEL", "")
    monkeypatch.setenv("EVENTCOMPOSITION_ENV", "")

    settings = load_settings()

    assert settings.logging.level == "INFO"
    assert settings.environment == "development"


def test_the_environment_comes_from_the_argument_over_the_variable(
    write_settings: WriteSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = write_settings(
        {
            "base": "",
            "staging": '[logging]\nlevel = "ERROR"\n',
            "qa": '[logging]\nlevel = "DEBUG"\n',
        }
    )
    monkeypatch.setenv("EVENTCOMPOSITION_ENV", "staging")

    from_variable = load_settings(settings_dir=directory)
    from_argument = load_settings("qa", settings_dir=directory)

    assert (from_variable.environment, from_variable.logging.level) == (
        "staging",
        "ERROR",
    )
    assert (from_argument.environment, from_argument.logging.level) == ("qa", "DEBUG")


def test_the_settings_folder_comes_from_the_variable_else_the_working_directory(
    write_settings: WriteSettings,
    monkeypatch: pytest.MonkeyPatch,
    isolated_environment: Path,
) -> None:
    (isolated_environment / "settings").mkdir()
    (isolated_environment / "settings" / "base.toml").write_text(
        '[logging]\nlevel = "ERROR"\n'
    )
    assert load_settings().logging.level == "ERROR"

    directory = write_settings({"base": '[logging]\nlevel = "DEBUG"\n'})
    monkeypatch.setenv("EVENTCOMPOSITION_SETTINGS_DIR", str(directory))
    assert load_settings().logging.level == "DEBUG"


def test_a_folder_without_toml_files_uses_the_shipped_environments(
    tmp_path: Path,
) -> None:
    settings = load_settings("production", settings_dir=tmp_path, node={"id": "n1"})

    assert settings.environment == "production"
    assert settings.storage.type == "memory"


def test_a_folder_needs_no_file_for_a_shipped_environment(
    write_settings: WriteSettings,
) -> None:
    directory = write_settings({"base": '[logging]\nformat = "json"\n', "test": ""})

    settings = load_settings(settings_dir=directory)

    assert settings.environment == "development"
    assert settings.logging.format == "json"


def test_environment_names_are_case_insensitive(write_settings: WriteSettings) -> None:
    directory = write_settings({"staging": '[logging]\nlevel = "ERROR"\n'})

    settings = load_settings("Staging", settings_dir=directory)

    assert settings.environment == "staging"
    assert settings.logging.level == "ERROR"


def test_choices_are_case_insensitive(write_settings: WriteSettings) -> None:
    directory = write_settings(
        {
            "base": '[logging]\nlevel = "debug"\nformat = "JSON"\n[node]\nrole = "Observer"'
        }
    )

    settings = load_settings(settings_dir=directory)

    assert (settings.logging.level, settings.logging.format) == ("DEBUG", "json")
    assert settings.node.role is BrokerRole.OBSERVER


def test_a_node_id_is_generated_when_absent_and_kept(
    write_settings: WriteSettings,
) -> None:
    settings = load_settings()
    node_id = settings.node.id

    assert node_id
    assert not any(character.isspace() for character in node_id)
    assert settings.node.id == node_id
    assert settings.model_copy().node.id == node_id
    assert load_settings().node.id != node_id

    directory = write_settings({"base": '[node]\nid = "node-7"\n'})
    assert load_settings(settings_dir=directory).node.id == "node-7"


def test_settings_are_frozen() -> None:
    settings = load_settings()

    with pytest.raises(ValueError, match="frozen"):
        settings.logging.level = "DEBUG"  # type: ignore[misc]


def test_files_are_read_only_during_their_load(write_settings: WriteSettings) -> None:
    directory = write_settings({"base": '[logging]\nlevel = "ERROR"\n'})

    assert load_settings(settings_dir=directory).logging.level == "ERROR"
    assert EventCompositionSettings().logging.level == "INFO"


def test_concurrent_loads_read_their_own_files(write_settings: WriteSettings) -> None:
    folders = {
        level: write_settings({"base": f'[logging]\nlevel = "{level}"\n'})
        for level in ("DEBUG", "ERROR")
    }

    def load(level: str) -> str:
        return load_settings(settings_dir=folders[level]).logging.level

    levels = ["DEBUG", "ERROR"] * 50
    with ThreadPoolExecutor(max_workers=8) as executor:
        loaded = list(executor.map(load, levels))

    assert loaded == levels


def test_an_explicit_settings_folder_must_exist(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(settings_dir=tmp_path / "missing")
