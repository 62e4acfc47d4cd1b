"""Shipped profiles, an application's folder over them, and what either refuses."""

from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from eventcomposition.settings import (
    SHIPPED_PROFILES_DIR,
    SettingsError,
    load_settings,
    loading,
    settings_files,
)

type WriteSettings = Callable[[Mapping[str, str]], Path]

PASSWORD = "file-password-1234"

# Captured at import, before the autouse fixture points the loader elsewhere.
REAL_SHIPPED = SHIPPED_PROFILES_DIR


@pytest.fixture
def shipped(write_settings: WriteSettings, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = write_settings(
        {
            "base": '[logging]\nlevel = "ERROR"\nformat = "json"\n',
            "development": "[consumers]\npoll_interval = 0.5\n",
            "production": "",
        }
    )
    monkeypatch.setattr(loading, "SHIPPED_PROFILES_DIR", directory)
    return directory


def test_the_package_ships_the_four_profiles() -> None:
    assert sorted(path.stem for path in REAL_SHIPPED.glob("*.toml")) == [
        "base",
        "development",
        "production",
        "test",
    ]


def test_an_application_folder_overlays_the_shipped_profiles(
    shipped: Path, write_settings: WriteSettings
) -> None:
    application = write_settings({"base": '[logging]\nlevel = "DEBUG"\n'})

    settings = load_settings(settings_dir=application)

    assert settings.logging.level == "DEBUG"  # the application's base
    assert settings.logging.format == "json"  # the shipped base
    assert settings.consumers.poll_interval.total_seconds() == 0.5
    assert settings_files(settings_dir=application) == (
        shipped / "base.toml",
        shipped / "development.toml",
        application / "base.toml",
    )


def test_the_working_directory_settings_folder_is_used_when_present(
    shipped: Path, isolated_environment: Path
) -> None:
    assert settings_files() == (shipped / "base.toml", shipped / "development.toml")

    (isolated_environment / "settings").mkdir()
    (isolated_environment / "settings" / "staging.toml").write_text(
        '[logging]\nlevel = "WARNING"\n'
    )

    assert load_settings("staging").logging.level == "WARNING"
    assert settings_files("staging") == (
        shipped / "base.toml",
        Path("settings") / "staging.toml",
    )


def test_an_environment_no_folder_defines_is_an_error(
    shipped: Path, write_settings: WriteSettings
) -> None:
    application = write_settings({"staging": ""})

    with pytest.raises(SettingsError) as caught:
        load_settings("qa", settings_dir=application)

    message = str(caught.value)
    assert message.startswith("unknown environment 'qa' (from argument): no qa.toml")
    assert str(application) in message
    assert str(shipped) in message
    assert message.endswith("known environments: development, production, staging")


@pytest.mark.parametrize("stem", ["base", "production"])
def test_production_refuses_a_password_in_a_file(
    shipped: Path, write_settings: WriteSettings, stem: str
) -> None:
    application = write_settings(
        {stem: f'[storage.postgres]\npassword = "{PASSWORD}"\n'}
    )

    with pytest.raises(SettingsError) as caught:
        load_settings("production", settings_dir=application)

    message = str(caught.value)
    assert message == (
        f"{application / f'{stem}.toml'} holds storage.postgres.password, which "
        "production refuses in a file: remove it and set "
        "EVENTCOMPOSITION_STORAGE__POSTGRES__PASSWORD"
    )
    assert PASSWORD not in message


def test_other_environments_accept_a_password_in_a_file(
    shipped: Path, write_settings: WriteSettings
) -> None:
    application = write_settings(
        {"base": f'[storage.postgres]\npassword = "{PASSWORD}"\n'}
    )

    settings = load_settings("development", settings_dir=application)

    password = settings.storage.postgres.password
    assert password is not None
    assert password.get_secret_value() == PASSWORD


def test_variables_that_name_no_setting_are_all_reported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("EVENTCOMPOSITION_STORGE__TYPE", "postgres")
    monkeypatch.setenv("EVENTCOMPOSITION_HTTPS__PORT", "8080")
    monkeypatch.setenv("EVENTCOMPOSITION_LOGGING__LEVEL__NAME", "x")
    monkeypatch.setenv("EVENTCOMPOSITION_CONSUMERS__POLL_INTERVAL", "0.5")

    with pytest.raises(SettingsError) as caught:
        load_settings()

    problems = str(caught.value).splitlines()[1:]
    unknown = [line for line in problems if "unknown key" in line]
    assert unknown == [
        "  - https: unknown key; expected one of: environment, node, storage, "
        "broker, consumers, http, health, logging (from env "
        "EVENTCOMPOSITION_HTTPS__PORT)",
        "  - logging.level.name: unknown key; logging.level has no keys "
        "(from env EVENTCOMPOSITION_LOGGING__LEVEL__NAME)",
        "  - storge: unknown key; expected one of: environment, node, storage, "
        "broker, consumers, http, health, logging (from env "
        "EVENTCOMPOSITION_STORGE__TYPE)",
    ]


def test_an_unknown_key_of_a_known_section_is_reported_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("EVENTCOMPOSITION_BROKER__TYPO", "1")

    with pytest.raises(SettingsError) as caught:
        load_settings()

    assert str(caught.value).count("broker.typo: unknown key") == 1


def test_the_package_variables_are_not_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in [
        "EVENTCOMPOSITION_TEST_DATABASE_URL",
        "EVENTCOMPOSITION_TEST_POSTGRES_BINDIR",
        "EVENTCOMPOSITION_PYTHON",
        "EVENTCOMPOSITION_LOCAL_PG_PORT",
    ]:
        monkeypatch.setenv(name, "anything")
    monkeypatch.setenv("EVENTCOMPOSITION_ENV", "test")

    assert load_settings().environment == "test"
