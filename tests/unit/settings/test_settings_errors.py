import traceback
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from eventcomposition.errors import EventCompositionError
from eventcomposition.settings import SettingsError, load_settings

type WriteSettings = Callable[[Mapping[str, str]], Path]

PASSWORD = "correct-horse-battery-staple"


def load_error(directory: Path, environment: str | None = None) -> SettingsError:
    with pytest.raises(SettingsError) as caught:
        load_settings(environment, settings_dir=directory)
    return caught.value


def test_a_settings_error_is_a_value_error_of_eventcomposition() -> None:
    assert issubclass(SettingsError, ValueError)
    assert issubclass(SettingsError, EventCompositionError)


def test_a_value_of_the_wrong_type_names_the_key_and_its_file(
    write_settings: WriteSettings,
) -> None:
    directory = write_settings({"base": '[storage.postgres]\nport = "five"\n'})

    message = str(load_error(directory))

    assert "storage.postgres.port: Input should be a valid integer" in message
    assert f"(from {directory / 'base.toml'})" in message


def test_a_value_out_of_range_is_an_error(write_settings: WriteSettings) -> None:
    directory = write_settings(
        {"base": "", "staging": "[storage.postgres]\nport = 70000\n"}
    )

    message = str(load_error(directory, "staging"))

    assert "storage.postgres.port: Input should be less than or equal to 65535" in (
        message
    )
    assert f"(from {directory / 'staging.toml'})" in message


@pytest.mark.parametrize("value", ["0", "-1", '"PT0S"'])
def test_intervals_must_be_positive(write_settings: WriteSettings, value: str) -> None:
    directory = write_settings({"base": f"[consumers]\npoll_interval = {value}\n"})

    message = str(load_error(directory))

    assert "consumers.poll_interval: must be a positive duration" in message


def test_an_unknown_choice_is_an_error(write_settings: WriteSettings) -> None:
    directory = write_settings({"base": '[storage]\ntype = "sqlite"\n'})

    message = str(load_error(directory))

    assert "storage.type: Input should be 'memory' or 'postgres'" in message


def test_an_unknown_key_in_a_file_is_named(write_settings: WriteSettings) -> None:
    directory = write_settings({"base": '[storage.postgres]\nhots = "db"\n'})

    message = str(load_error(directory))

    assert "storage.postgres.hots: unknown key; expected one of: host, port," in message
    assert f"(from {directory / 'base.toml'})" in message


def test_an_unknown_section_is_named(write_settings: WriteSettings) -> None:
    directory = write_settings({"base": "[databse]\nhost = 'db'\n"})

    message = str(load_error(directory))

    assert "databse: unknown key; expected one of: environment, node," in message


def test_an_unknown_key_in_an_environment_variable_is_named(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("EVENTCOMPOSITION_STORAGE__POSTGRES__PASWORD", PASSWORD)

    message = str(load_error(tmp_path))

    assert "storage.postgres.pasword: unknown key" in message
    assert "(from env EVENTCOMPOSITION_STORAGE__POSTGRES__PASWORD)" in message
    assert PASSWORD not in message


def test_a_bad_environment_variable_is_named(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(
        "EVENTCOMPOSITION_BROKER__COORDINATOR_DISTRIBUTION_INTERVAL", "x"
    )

    message = str(load_error(tmp_path))

    assert "broker.coordinator_distribution_interval: not a duration" in message
    assert "(from env EVENTCOMPOSITION_BROKER__COORDINATOR_DISTRIBUTION_INTERVAL)" in (
        message
    )


def test_every_bad_field_is_listed_in_one_error(
    write_settings: WriteSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = write_settings(
        {
            "base": """
                [node]
                role = "leader"
                [storage.postgres]
                port = 0
                [logging]
                level = "LOUD"
            """
        }
    )
    monkeypatch.setenv("EVENTCOMPOSITION_CONSUMERS__ERROR_POLICY", "ignore")

    lines = str(load_error(directory)).splitlines()

    assert lines[0].startswith("invalid settings (environment 'development'")
    problems = sorted(line.split(":")[0].strip(" -") for line in lines[1:])
    assert problems == [
        "consumers.error_policy",
        "logging.level",
        "node.role",
        "storage.postgres.port",
    ]


def test_the_error_never_shows_the_values_given(write_settings: WriteSettings) -> None:
    directory = write_settings(
        {
            "base": f"""
                [storage.postgres]
                password = "{PASSWORD}"
                port = "{PASSWORD}-port"
                user = ""
            """
        }
    )

    error = load_error(directory)

    assert "storage.postgres.port" in str(error)
    assert "storage.postgres.user" in str(error)
    assert PASSWORD not in str(error)
    assert PASSWORD not in "".join(traceback.format_exception(error))
    assert error.__cause__ is None


def test_a_secret_of_the_wrong_type_is_not_shown(write_settings: WriteSettings) -> None:
    directory = write_settings({"base": "[storage.postgres]\npassword = 918273645\n"})

    message = str(load_error(directory))

    assert "storage.postgres.password: Input should be a valid string" in message
    assert "918273645" not in message


def test_a_toml_syntax_error_names_the_file_and_line(
    write_settings: WriteSettings,
) -> None:
    directory = write_settings(
        {"base": "", "staging": f'[storage.postgres]\npassword = "{PASSWORD}\n'}
    )

    error = load_error(directory, "staging")

    assert str(error).startswith(f"{directory / 'staging.toml'} is not valid TOML")
    assert "line 2" in str(error)
    assert PASSWORD not in "".join(traceback.format_exception(error))


def test_an_unknown_environment_lists_the_known_ones(
    write_settings: WriteSettings,
) -> None:
    directory = write_settings({"base": "", "production": "", "development": ""})

    message = str(load_error(directory, "staging"))

    assert message.startswith("unknown environment 'staging'")
    assert message.endswith("known environments: development, production, test")


def test_an_unknown_environment_from_the_variable_is_an_error(
    write_settings: WriteSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = write_settings({"base": "", "test": ""})
    monkeypatch.setenv("EVENTCOMPOSITION_ENV", "prod")

    message = str(load_error(directory))

    assert "unknown environment 'prod' (from env EVENTCOMPOSITION_ENV)" in message
    assert "known environments: development, production, test" in message


@pytest.mark.parametrize("name", ["../base", "base", "", "a b"])
def test_an_environment_name_must_be_one_plain_word(
    write_settings: WriteSettings, name: str
) -> None:
    directory = write_settings({"base": ""})

    assert "invalid environment name" in str(load_error(directory, name))


def test_production_with_postgres_needs_a_password(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings("production", settings_dir=tmp_path, storage={"type": "postgres"})

    assert str(caught.value).endswith(
        "storage.postgres.password is required in production; "
        "set EVENTCOMPOSITION_STORAGE__POSTGRES__PASSWORD"
    )


def test_production_in_memory_or_with_a_password_is_fine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert load_settings("production", settings_dir=tmp_path).storage.type == "memory"

    monkeypatch.setenv("EVENTCOMPOSITION_STORAGE__POSTGRES__PASSWORD", PASSWORD)
    settings = load_settings(
        "production", settings_dir=tmp_path, storage={"type": "postgres"}
    )
    assert settings.storage.postgres.password is not None


def test_the_environment_cannot_be_set_in_a_file(write_settings: WriteSettings) -> None:
    directory = write_settings({"base": 'environment = "production"\n'})

    message = str(load_error(directory))

    assert "environment: choose it with $EVENTCOMPOSITION_ENV" in message
    assert f"(from {directory / 'base.toml'})" in message


def test_the_pool_bounds_must_be_ordered(write_settings: WriteSettings) -> None:
    directory = write_settings(
        {"base": "[storage.postgres]\npool_min_size = 5\npool_max_size = 2\n"}
    )

    message = str(load_error(directory))

    assert "storage.postgres: pool_min_size must not be greater than pool_max_size" in (
        message
    )


@pytest.mark.parametrize(
    ("section", "text"),
    [
        ("broker", "retry_initial_delay = 60\nretry_max_delay = 30"),
        ("consumers", "retry_initial_delay = 20\nretry_max_delay = 10"),
    ],
)
def test_retry_delays_must_be_ordered(
    write_settings: WriteSettings, section: str, text: str
) -> None:
    directory = write_settings({"base": f"[{section}]\n{text}\n"})

    message = str(load_error(directory))

    assert f"{section}: retry_initial_delay must not exceed retry_max_delay" in message


@pytest.mark.parametrize(
    "limit",
    [
        "coordinator_subscriber_max_time_since_last_seen",
        "subscriber_manager_subscriber_max_age",
    ],
)
def test_subscribers_must_outlive_their_heartbeat(
    write_settings: WriteSettings, limit: str
) -> None:
    directory = write_settings(
        {"base": f"[broker]\nsubscriber_manager_heartbeat_interval = 5\n{limit} = 5\n"}
    )

    message = str(load_error(directory))

    assert (
        f"broker: {limit} must be longer than subscriber_manager_heartbeat_interval"
        in message
    )


@pytest.mark.parametrize("node_id", ["", "node 1", "node\t1"])
def test_a_node_id_is_one_word(write_settings: WriteSettings, node_id: str) -> None:
    directory = write_settings({"base": f'[node]\nid = "{node_id}"\n'})

    message = str(load_error(directory))

    assert "node.id: must be non-empty and contain no whitespace" in message


@pytest.mark.parametrize("role", ["coordinator", "observer"])
def test_a_split_role_needs_the_distributed_broker(tmp_path: Path, role: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(
            "test",
            settings_dir=tmp_path,
            node={"role": role},
            broker={"type": "singleton"},
        )

    assert f"node.role '{role}' needs broker.type 'distributed'" in str(caught.value)


def test_postgres_consumers_must_run_on_the_main_thread(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(
            "test",
            settings_dir=tmp_path,
            storage={"type": "postgres"},
            consumers={"isolation_mode": "dedicated_thread"},
        )

    assert "consumers.isolation_mode must be 'main_thread'" in str(caught.value)


@pytest.mark.parametrize("value", ["5minutes", "5:00", "ten seconds"])
def test_a_bad_duration_says_what_a_duration_may_look_like(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, value: str
) -> None:
    monkeypatch.setenv("EVENTCOMPOSITION_CONSUMERS__CLAIM_LEASE", value)

    message = str(load_error(tmp_path))

    assert "consumers.claim_lease: not a duration: give seconds (30 or 0.5) or an " in (
        message
    )
    assert "ISO 8601 duration (PT30S, PT5M, PT1H30M)" in message
    assert "invalid character" not in message


def test_a_postgres_timeout_longer_than_the_claim_lease_is_an_error(
    write_settings: WriteSettings,
) -> None:
    directory = write_settings(
        {
            "base": '[storage]\ntype = "postgres"\n'
            "[storage.postgres]\nidle_in_transaction_timeout = 12\n"
            "[consumers]\nclaim_lease = 10\n"
        }
    )

    message = str(load_error(directory))

    assert "idle_in_transaction_timeout must not exceed consumers.claim_lease" in (
        message
    )
