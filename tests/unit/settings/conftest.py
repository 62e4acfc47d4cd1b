import os
from collections.abc import Callable, Mapping
from pathlib import Path
from textwrap import dedent

import pytest

from eventcomposition.settings import loading

type WriteSettings = Callable[[Mapping[str, str]], Path]


@pytest.fixture(autouse=True)
def isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No EVENTCOMPOSITION_* variables, and a working directory without settings."""
    for name in list(os.environ):
        if name.upper().startswith("EVENTCOMPOSITION_"):
            monkeypatch.delenv(name)
    working_directory = tmp_path / "cwd"
    working_directory.mkdir()
    monkeypatch.chdir(working_directory)
    # Shipped profiles that set nothing, so a test sees the model defaults and
    # its own files only.
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    for environment in ("development", "test", "production"):
        (shipped / f"{environment}.toml").write_text("")
    monkeypatch.setattr(loading, "SHIPPED_PROFILES_DIR", shipped)
    return working_directory


@pytest.fixture
def write_settings(tmp_path: Path) -> WriteSettings:
    """Write ``{stem: toml text}`` as ``<stem>.toml`` files into a new folder."""
    folders = iter(range(1_000))

    def write(files: Mapping[str, str]) -> Path:
        directory = tmp_path / f"settings-{next(folders)}"
        directory.mkdir()
        for stem, text in files.items():
            (directory / f"{stem}.toml").write_text(dedent(text))
        return directory

    return write
