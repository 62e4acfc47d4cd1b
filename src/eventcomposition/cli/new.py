"""``eventcomposition new PATH``: a ready application in a new folder.

The files come from the package data under ``eventcomposition/templates/app``:
each ``*.tmpl`` file is written without that suffix, with ``{{project}}``,
``{{package}}`` and ``{{eventcomposition_version}}`` replaced; a ``__package__``
folder takes the package's name and ``gitignore`` becomes ``.gitignore``.
"""

import argparse
import keyword
import re
from importlib import metadata, resources
from importlib.resources.abc import Traversable
from pathlib import Path

from .errors import CommandError

TEMPLATE = "app"
SUFFIX = ".tmpl"
PACKAGE_FOLDER = "__package__"
RENAMED = {"gitignore": ".gitignore"}


def create(args: argparse.Namespace) -> int:
    target = Path(args.path)
    project = project_name(args.name or target.resolve().name)
    package = project.replace("-", "_")
    check_target(target)
    written = render(
        target,
        {
            "project": project,
            "package": package,
            "eventcomposition_version": eventcomposition_version(),
        },
    )
    print(f"created {project} in {target} ({len(written)} files)")
    print(f"  cd {target}")
    print("  uv sync && uv run pytest")
    print(f"  eventcomposition db migrate --app {package}.container:AppContainer")
    print(f"  eventcomposition run --app {package}.container:AppContainer")
    return 0


def project_name(text: str) -> str:
    """A distribution name from a folder's name: lower case, words joined by '-'."""
    name = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    package = name.replace("-", "_")
    if not name or name[0].isdigit() or keyword.iskeyword(package):
        raise CommandError(
            f"cannot make a Python package name of {text!r}: pass --name with a "
            "name that starts with a letter (e.g. --name orders-app)"
        )
    return name


def check_target(target: Path) -> None:
    """Refuse a target that is a file or a folder with anything in it."""
    if target.is_file():
        raise CommandError(f"{target} is a file: give the path of a new folder")
    if target.is_dir() and any(target.iterdir()):
        raise CommandError(
            f"{target} is not empty: give the path of a new or empty folder "
            "(nothing was written)"
        )


def eventcomposition_version() -> str:
    try:
        return metadata.version("eventcomposition")
    except metadata.PackageNotFoundError:  # pragma: no cover - run from a bare tree
        return "0.1.0"


def render(target: Path, values: dict[str, str]) -> list[Path]:
    """Write the template's files under ``target``; the paths written."""
    root = resources.files("eventcomposition").joinpath("templates", TEMPLATE)
    written: list[Path] = []
    for relative, source in template_files(root):
        parts = [
            values["package"] if part == PACKAGE_FOLDER else RENAMED.get(part, part)
            for part in relative
        ]
        destination = target.joinpath(*parts)
        destination.parent.mkdir(parents=True, exist_ok=True)
        text = source.read_text(encoding="utf-8")
        for key, value in values.items():
            text = text.replace("{{" + key + "}}", value)
        destination.write_text(text, encoding="utf-8")
        written.append(destination)
    return written


def template_files(
    folder: Traversable, prefix: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], Traversable]]:
    """Every ``*.tmpl`` file under ``folder``: its path (suffix removed) and itself."""
    found: list[tuple[tuple[str, ...], Traversable]] = []
    for entry in sorted(folder.iterdir(), key=lambda entry: entry.name):
        if entry.is_dir():
            found.extend(template_files(entry, (*prefix, entry.name)))
        elif entry.name.endswith(SUFFIX):
            found.append(((*prefix, entry.name.removesuffix(SUFFIX)), entry))
    return found
