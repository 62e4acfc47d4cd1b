"""Loading the settings from their layered sources, and reporting where each came from.

Sources, lowest priority first:

1. the model defaults;
2. ``<settings dir>/base.toml``;
3. ``<settings dir>/<environment>.toml``;
4. environment variables ``EVENTCOMPOSITION_<SECTION>__<KEY>`` (case-insensitive);
5. the keyword arguments of :func:`load_settings`.

The TOML files merge deeply: an overlay that sets one key of a table keeps the rest.
"""

import os
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from enum import Enum
from pathlib import Path
from typing import Any, NamedTuple

from pydantic import BaseModel, SecretStr, ValidationError
from pydantic_core import ErrorDetails
from pydantic_settings import SettingsError as PydanticSettingsError

from eventcomposition.errors import EventCompositionError
from eventcomposition.settings.models import (
    ENV_NESTED_DELIMITER,
    ENV_PREFIX,
    EventCompositionSettings,
    reading_toml_files,
)

ENVIRONMENT_VARIABLE = "EVENTCOMPOSITION_ENV"
SETTINGS_DIR_VARIABLE = "EVENTCOMPOSITION_SETTINGS_DIR"
DEFAULT_ENVIRONMENT = "development"
DEFAULT_SETTINGS_DIR = Path("settings")
BASE_FILE_STEM = "base"
MASK = "**********"

type _Path = tuple[str, ...]
type _Layer = Mapping[_Path, str]
"""The keys one source sets (dotted path as a tuple) and how to name that source."""


class SettingsError(EventCompositionError, ValueError):
    """The settings cannot be loaded; the message lists every problem found.

    It never contains a value that was given, so it is safe to print and log.
    """


class SettingSource(NamedTuple):
    """One leaf setting: its dotted key, its value (secrets masked) and its source."""

    key: str
    value: str
    source: str


def load_settings(
    environment: str | None = None,
    *,
    settings_dir: Path | str | None = None,
    **overrides: Any,
) -> EventCompositionSettings:
    """Load and validate the settings of one node.

    ``environment`` defaults to ``$EVENTCOMPOSITION_ENV``, else ``development``.
    ``settings_dir`` defaults to ``$EVENTCOMPOSITION_SETTINGS_DIR``, else
    ``./settings``. A settings folder holding no ``*.toml`` file (or a default
    ``./settings`` that does not exist, as when the package is installed elsewhere)
    leaves the built-in defaults, the environment variables and ``overrides``.
    ``base.toml`` is optional; an environment chosen explicitly must have its
    ``<environment>.toml`` in a settings folder that has TOML files.

    ``overrides`` are the highest-priority values, by section, e.g.
    ``load_settings("test", storage={"postgres": {"port": 6543}})``; they merge
    deeply with the lower sources.

    Raises SettingsError listing every problem, without the values given.
    """
    plan = _plan(environment, settings_dir, overrides)
    return _validate(plan, overrides)


def settings_with_sources(
    environment: str | None = None,
    *,
    settings_dir: Path | str | None = None,
    **overrides: Any,
) -> list[SettingSource]:
    """Every leaf setting as :func:`load_settings` would load it, and its source.

    The source is ``default``, a TOML file's path, ``env <VARIABLE>`` or
    ``argument``. Secrets are shown as ``**********``. The node id, when generated,
    differs from that of any other load.
    """
    plan = _plan(environment, settings_dir, overrides)
    settings = _validate(plan, overrides)
    rows = [SettingSource("environment", plan.environment, plan.environment_source)]
    for path, value in _leaves(settings.model_dump(exclude={"environment"})):
        source = _source_of(path, plan.layers) or "default"
        rows.append(SettingSource(".".join(path), _display(value), source))
    return rows


@dataclass(frozen=True)
class _Plan:
    """What one load reads: the environment, the files and each source's keys."""

    environment: str
    environment_source: str
    settings_dir: Path
    files: tuple[Path, ...]
    layers: tuple[_Layer, ...]  # lowest priority first


def _plan(
    environment: str | None,
    settings_dir: Path | str | None,
    overrides: Mapping[str, Any],
) -> _Plan:
    environ = os.environ
    name, environment_source = _choose_environment(environment, environ)
    directory, directory_is_explicit = _choose_settings_dir(settings_dir, environ)
    if directory_is_explicit and not directory.is_dir():
        raise SettingsError(f"settings folder {directory} does not exist")

    available = sorted(directory.glob("*.toml")) if directory.is_dir() else []
    base_file = directory / f"{BASE_FILE_STEM}.toml"
    environment_file = directory / f"{name}.toml"
    files = [path for path in (base_file, environment_file) if path in available]
    # A default environment may lack its file; one asked for must have it.
    missing = bool(available) and environment_file not in available
    if missing and environment_source != "default":
        known = [path.stem for path in available if path.stem != BASE_FILE_STEM]
        raise SettingsError(
            f"unknown environment {name!r}: there is no {environment_file}; "
            f"known environments: {', '.join(known) or '(none)'}"
        )

    layers: list[_Layer] = [_file_layer(path) for path in files]
    layers.append(_environment_variable_layer(environ))
    layers.append({path: "argument" for path, _ in _leaves(overrides)})
    return _Plan(
        environment=name,
        environment_source=environment_source,
        settings_dir=directory,
        files=tuple(files),
        layers=tuple(layers),
    )


def _choose_environment(
    explicit: str | None, environ: Mapping[str, str]
) -> tuple[str, str]:
    if explicit is not None:
        name, source = explicit, "argument"
    elif environ.get(ENVIRONMENT_VARIABLE):
        name, source = environ[ENVIRONMENT_VARIABLE], f"env {ENVIRONMENT_VARIABLE}"
    else:
        name, source = DEFAULT_ENVIRONMENT, "default"
    name = name.strip().lower()
    # The name becomes a file name: keep it to one plain word.
    if (
        not name
        or name == BASE_FILE_STEM
        or not all(c.isascii() and (c.isalnum() or c in "-_") for c in name)
    ):
        raise SettingsError(
            f"invalid environment name (from {source}): use letters, digits, '-' "
            f"or '_', and not {BASE_FILE_STEM!r}"
        )
    return name, source


def _choose_settings_dir(
    explicit: Path | str | None, environ: Mapping[str, str]
) -> tuple[Path, bool]:
    if explicit is not None:
        return Path(explicit), True
    if environ.get(SETTINGS_DIR_VARIABLE):
        return Path(environ[SETTINGS_DIR_VARIABLE]), True
    return DEFAULT_SETTINGS_DIR, False


def _file_layer(path: Path) -> _Layer:
    # pydantic-settings reads the file again to build the values; reading it here
    # too names the file in syntax errors and records which keys it sets.
    try:
        with path.open("rb") as file:
            data = tomllib.load(file)
    except tomllib.TOMLDecodeError as error:
        # tomllib's message names the line and column, and at most a key or a
        # single character: never a value.
        raise SettingsError(f"{path} is not valid TOML: {error}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise SettingsError(f"cannot read {path}: {error}") from None
    return {leaf: str(path) for leaf, _ in _leaves(data)}


def _environment_variable_layer(environ: Mapping[str, str]) -> _Layer:
    # Mirrors pydantic-settings: prefix and delimiter, case-insensitive, empty
    # values ignored. Only the names are kept, to say which variable set a key.
    layer: dict[_Path, str] = {}
    selectors = {ENVIRONMENT_VARIABLE, SETTINGS_DIR_VARIABLE}
    for variable, value in environ.items():
        upper = variable.upper()
        if not value or not upper.startswith(ENV_PREFIX) or upper in selectors:
            continue
        key = upper.removeprefix(ENV_PREFIX).lower()
        layer[tuple(key.split(ENV_NESTED_DELIMITER))] = f"env {variable}"
    return layer


def _leaves(data: Mapping[str, Any], prefix: _Path = ()) -> Iterator[tuple[_Path, Any]]:
    for key, value in data.items():
        if isinstance(value, Mapping) and value:
            yield from _leaves(value, (*prefix, key))
        else:
            yield (*prefix, key), value


def _source_of(path: _Path, layers: tuple[_Layer, ...]) -> str | None:
    """The highest source that sets ``path`` (or a whole table holding it)."""
    for layer in reversed(layers):
        for length in range(len(path), 0, -1):
            if path[:length] in layer:
                return layer[path[:length]]
    return None


def _validate(plan: _Plan, overrides: Mapping[str, Any]) -> EventCompositionSettings:
    problems = [
        f"environment: choose it with ${ENVIRONMENT_VARIABLE} or the environment "
        f"argument, not here (from {layer[('environment',)]})"
        for layer in plan.layers[:-1]
        if ("environment",) in layer
    ]
    settings: EventCompositionSettings | None = None
    try:
        with reading_toml_files(plan.files):
            settings = EventCompositionSettings(
                **overrides, environment=plan.environment
            )
    except ValidationError as error:
        problems.extend(_describe(error, plan.layers))
    except PydanticSettingsError as error:
        problems.append(str(error))
    if problems or settings is None:
        raise SettingsError(
            f"invalid settings (environment {plan.environment!r}, settings folder "
            f"{plan.settings_dir}):\n" + "\n".join(f"  - {p}" for p in problems)
        )
    return settings


def _describe(error: ValidationError, layers: tuple[_Layer, ...]) -> list[str]:
    # include_input=False: the values given (a password among them) stay out.
    lines: list[str] = []
    for detail in error.errors(include_input=False, include_url=False):
        line = _describe_one(detail, layers)
        if line not in lines:
            lines.append(line)
    return lines


def _describe_one(detail: ErrorDetails, layers: tuple[_Layer, ...]) -> str:
    path = tuple(str(part) for part in detail["loc"])
    message = detail["msg"].removeprefix("Value error, ")
    if detail["type"] == "extra_forbidden":
        known = _known_keys(path[:-1])
        message = "unknown key" + (
            f"; expected one of: {', '.join(known)}" if known else ""
        )
    source = _source_of(path, layers) if path else None
    where = f" (from {source})" if source else ""
    return f"{'.'.join(path) + ': ' if path else ''}{message}{where}"


def _known_keys(section: _Path) -> list[str]:
    model: type[BaseModel] = EventCompositionSettings
    for name in section:
        field = model.model_fields.get(name)
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def _display(value: Any) -> str:
    match value:
        case SecretStr():
            return MASK
        case None:
            return "(not set)"
        case timedelta():
            return f"{value.total_seconds():g}s"
        case Enum():
            return str(value.value)
        case _:
            return str(value)
