"""Settings of a node started from an application's own folder, as processes."""

import sys
from pathlib import Path

from eventcomposition.testing.processes import node_environment, run_to_completion

COMMAND = [sys.executable, "-m", "eventcomposition"]
PASSWORD = "in-a-file-Secret-1"


def test_production_from_a_folder_without_settings_demands_the_password(
    tmp_path: Path,
) -> None:
    completed = run_to_completion(
        [*COMMAND, "run", "--env", "production"],
        env=node_environment(environment="production"),
        cwd=tmp_path,
    )

    assert completed.returncode == 2
    assert len(completed.stderr) == 1
    assert completed.stderr[0].endswith(
        "storage.postgres.password is required in production; set "
        "EVENTCOMPOSITION_STORAGE__POSTGRES__PASSWORD"
    )


def test_an_application_folder_overlays_the_shipped_profiles(tmp_path: Path) -> None:
    (tmp_path / "settings").mkdir()
    (tmp_path / "settings" / "production.toml").write_text(
        '[storage]\ntype = "memory"\n'
    )

    completed = run_to_completion(
        [*COMMAND, "settings", "show", "--env", "production"],
        env=node_environment(environment="production"),
        cwd=tmp_path,
    )

    assert completed.returncode == 0, completed.stderr
    files = completed.stdout[1 : completed.stdout.index("")]
    assert [Path(line.strip()).name for line in files] == [
        "base.toml",
        "production.toml",
        "production.toml",
    ]
    assert files[-1].strip() == "settings/production.toml"
    rows = {line.split()[0]: line for line in completed.stdout if line.strip()}
    assert rows["storage.type"].split()[1:] == ["memory", "settings/production.toml"]
    shipped_production = files[1].strip()
    assert rows["broker.coordinator_distribution_interval"].endswith(shipped_production)


def test_a_misspelt_section_in_a_variable_is_refused_by_name(tmp_path: Path) -> None:
    environment = node_environment()
    environment["EVENTCOMPOSITION_STORGE__TYPE"] = "postgres"

    completed = run_to_completion([*COMMAND, "run"], env=environment, cwd=tmp_path)

    assert completed.returncode == 2
    assert len(completed.stderr) == 1
    assert "storge: unknown key" in completed.stderr[0]
    assert "(from env EVENTCOMPOSITION_STORGE__TYPE)" in completed.stderr[0]


def test_a_password_in_a_production_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "settings").mkdir()
    (tmp_path / "settings" / "base.toml").write_text(
        f'[storage.postgres]\npassword = "{PASSWORD}"\n'
    )

    completed = run_to_completion(
        [*COMMAND, "run", "--env", "production"],
        env=node_environment(environment="production"),
        cwd=tmp_path,
    )

    assert completed.returncode == 2
    assert completed.stderr == [
        "eventcomposition: error: settings/base.toml holds storage.postgres.password, "
        "which production refuses in a file: remove it and set "
        "EVENTCOMPOSITION_STORAGE__POSTGRES__PASSWORD"
    ]
