"""The settings files shipped in the repository's settings/ folder."""

import shutil
import tomllib
from datetime import timedelta
from pathlib import Path

import pytest

from eventcomposition.settings import (
    EventCompositionSettings,
    load_settings,
    settings_with_sources,
)

SHIPPED = Path(__file__).resolve().parents[3] / "settings"
ENVIRONMENTS = sorted(
    path.stem for path in SHIPPED.glob("*.toml") if path.stem != "base"
)


@pytest.fixture
def database_password(monkeypatch: pytest.MonkeyPatch) -> str:
    password = "shipped-files-password"
    monkeypatch.setenv("EVENTCOMPOSITION_STORAGE__POSTGRES__PASSWORD", password)
    return password


def test_the_expected_environments_are_shipped() -> None:
    assert ENVIRONMENTS == ["development", "production", "test"]


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_every_shipped_environment_loads(
    environment: str, database_password: str
) -> None:
    settings = load_settings(environment, settings_dir=SHIPPED)

    assert settings.environment == environment


def test_production_needs_the_password_from_the_environment() -> None:
    with pytest.raises(ValueError, match="password is required in production"):
        load_settings("production", settings_dir=SHIPPED)


def test_no_shipped_file_holds_a_password() -> None:
    for path in SHIPPED.glob("*.toml"):
        data = tomllib.loads(path.read_text())
        assert "password" not in data.get("storage", {}).get("postgres", {}), path


def test_base_mirrors_the_model_defaults(tmp_path: Path) -> None:
    shutil.copy(SHIPPED / "base.toml", tmp_path / "base.toml")

    from_base = load_settings(settings_dir=tmp_path, node={"id": "n"})

    assert from_base == EventCompositionSettings(node={"id": "n"})


def test_base_documents_every_key(tmp_path: Path) -> None:
    shutil.copy(SHIPPED / "base.toml", tmp_path / "base.toml")
    not_in_files = {"environment", "node.id", "storage.postgres.password"}

    rows = settings_with_sources(settings_dir=tmp_path)

    undocumented = [
        row.key
        for row in rows
        if row.key not in not_in_files and row.source != str(tmp_path / "base.toml")
    ]
    assert undocumented == []


@pytest.mark.parametrize("environment", ["development", "test"])
def test_development_and_test_are_in_memory_and_fast(environment: str) -> None:
    settings = load_settings(environment, settings_dir=SHIPPED)
    broker = settings.broker

    assert settings.storage.type == "memory"
    assert settings.logging.format == "console"
    assert settings.consumers.poll_interval <= timedelta(seconds=0.1)
    for interval in (
        broker.subscriber_manager_heartbeat_interval,
        broker.coordinator_distribution_interval,
        broker.coordinator_leadership_attempt_interval,
        broker.observer_synchronisation_interval,
        broker.distribution_interval,
    ):
        assert interval <= timedelta(seconds=0.5)
    assert broker.coordinator_subscriber_max_time_since_last_seen <= timedelta(
        seconds=3
    )


def test_development_logs_info_and_test_logs_warnings() -> None:
    assert load_settings("development", settings_dir=SHIPPED).logging.level == "INFO"
    assert load_settings("test", settings_dir=SHIPPED).logging.level == "WARNING"


def test_production_uses_postgres_and_json_logs(database_password: str) -> None:
    settings = load_settings("production", settings_dir=SHIPPED)

    assert settings.storage.type == "postgres"
    assert settings.logging.format == "json"
    assert settings.broker.coordinator_distribution_interval == timedelta(seconds=5)
    assert settings.broker.coordinator_subscriber_max_time_since_last_seen == (
        timedelta(seconds=30)
    )
