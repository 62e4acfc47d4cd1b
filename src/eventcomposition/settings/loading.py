"""Loading the settings from their layered sources, and reporting where each came from.

Sources, lowest priority first:

1. the model defaults;
2. the profiles shipped with the package (``base.toml``, then
   ``<environment>.toml``);
3. the application's settings folder, when there is one (its ``base.toml``, then
   its ``<environment>.toml``);
4. environment variables ``EVENTCOMPOSITION_<SECTION>__<KEY>`` (case-insensitive);
5. the keyword arguments of :func:`load_settings`.

The TOML files merge deeply: an overlay that sets one key of a table keeps the rest.
"""

import os
import tomllib
from collections.abc import Iterator, Mapping, Sequence
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
    EventCompositionSettings,
    reading_toml_files,
)
from eventcomposition.settings.variables import (
    ENV_NESTED_DELIMITER,
    ENV_PREFIX,
    ENVIRONMENT_VARIABLE,
    PACKAGE_VARIABLES,
    PASSWORD_VARIABLE,
    SETTINGS_DIR_VARIABLE,
)

DEFAULT_ENVIRONMENT = "development"
PRODUCTION_ENVIRONMENT = "production"
DEFAULT_SETTINGS_DIR = Path("settings")
BASE_FILE_STEM = "base"
MASK = "**********"
_PASSWORD_KEY = ("storage", "postgres", "password")


def _shipped_profiles() -> Path:
    # A built wheel carries the top-level settings/ folder here (pyproject.toml's
    # force-include); an editable install runs from the source tree, beside it.
    installed = Path(__file__).with_name("profiles")
    if installed.is_dir():
        return installed
    return Path(__file__).resolve().parents[3] / "settings"


SHIPPED_PROFILES_DIR = _shipped_profiles()
"""The profiles shipped with the package: base, development, test, production."""

type _Path = tuple[str, ...]
type _Layer = Mapping[_Path, str]
"""The keys one source sets (dotted path as a tuple) and how to name that source."""


DURATION_HELP = (
    "not a duration: give seconds (30 or 0.5) or an ISO 8601 duration "
    "(PT30S, PT5M, PT1H30M)"
)


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
    The application's settings folder, ``settings_dir``, defaults to
    ``$EVENTCOMPOSITION_SETTINGS_DIR``, else ``./settings`` when it exists; its
    files overlay the profiles shipped with the package. ``base.toml`` is
    optional; the environment must have its ``<environment>.toml`` in one of the
    two folders. A password in a file is refused in production. Every
    ``EVENTCOMPOSITION_*`` variable must name a setting (or be one of the
    package's own, such as ``EVENTCOMPOSITION_ENV``).

    ``overrides`` are the highest-priority values, by section, e.g.
    ``load_settings("test", storage={"postgres": {"port": 6543}})``; they merge
    deeply with the lower sources.

    Raises SettingsError listing every problem, without the values given.
    """
    plan = _plan(environment, settings_dir, overrides)
    return _validate(plan, overrides)


def settings_files(
    environment: str | None = None, *, settings_dir: Path | str | None = None
) -> tuple[Path, ...]:
    """The TOML files :func:`load_settings` reads, lowest priority first."""
    return _plan(environment, settings_dir, {}).files


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
    folders: tuple[Path, ...]  # shipped profiles first, then the application's
    files: tuple[Path, ...]
    layers: tuple[_Layer, ...]  # lowest priority first
    unknown_variables: tuple[str, ...]  # problems, one line each


def _plan(
    environment: str | None,
    settings_dir: Path | str | None,
    overrides: Mapping[str, Any],
) -> _Plan:
    environ = os.environ
    name, environment_source = _choose_environment(environment, environ)
    folders = _settings_folders(settings_dir, environ)
    files = [
        folder / f"{stem}.toml"
        for folder in folders
        for stem in (BASE_FILE_STEM, name)
        if (folder / f"{stem}.toml").is_file()
    ]
    if not any(path.stem == name for path in files):
        known = sorted(
            {
                path.stem
                for folder in folders
                for path in folder.glob("*.toml")
                if path.stem != BASE_FILE_STEM
            }
        )
        raise SettingsError(
            f"unknown environment {name!r} (from {environment_source}): no "
            f"{name}.toml in {' or '.join(str(folder) for folder in folders)}; "
            f"known environments: {', '.join(known) or '(none)'}"
        )

    layers: list[_Layer] = [_file_layer(path) for path in files]
    if name == PRODUCTION_ENVIRONMENT:
        _refuse_passwords_in_files(layers)
    variables, unknown = _environment_variable_layer(environ)
    layers.append(variables)
    layers.append({path: "argument" for path, _ in _leaves(overrides)})
    return _Plan(
        environment=name,
        environment_source=environment_source,
        folders=folders,
        files=tuple(files),
        layers=tuple(layers),
        unknown_variables=tuple(unknown),
    )


def _settings_folders(
    explicit: Path | str | None, environ: Mapping[str, str]
) -> tuple[Path, ...]:
    """The shipped profiles, then the application's folder when there is one."""
    if explicit is not None:
        folder, source = Path(explicit), "argument"
    elif environ.get(SETTINGS_DIR_VARIABLE):
        folder, source = Path(environ[SETTINGS_DIR_VARIABLE]), SETTINGS_DIR_VARIABLE
    else:
        folder, source = DEFAULT_SETTINGS_DIR, ""
    if not folder.is_dir():
        if source:
            raise SettingsError(
                f"settings folder {folder} (from {source}) does not exist; create "
                "it or point at an existing folder"
            )
        return (SHIPPED_PROFILES_DIR,)
    if folder.resolve() == SHIPPED_PROFILES_DIR.resolve():
        return (SHIPPED_PROFILES_DIR,)
    return (SHIPPED_PROFILES_DIR, folder)


def _refuse_passwords_in_files(layers: Sequence[_Layer]) -> None:
    for layer in layers:
        if _PASSWORD_KEY in layer:
            raise SettingsError(
                f"{layer[_PASSWORD_KEY]} holds storage.postgres.password, which "
                f"production refuses in a file: remove it and set {PASSWORD_VARIABLE}"
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


def _environment_variable_layer(
    environ: Mapping[str, str],
) -> tuple[_Layer, list[str]]:
    """The keys the variables set, and a problem for each that names no setting.

    Mirrors pydantic-settings: prefix and delimiter, case-insensitive, empty values
    ignored. Only the names are kept, to say which variable set a key.
    """
    layer: dict[_Path, str] = {}
    unknown: list[str] = []
    for variable, value in environ.items():
        upper = variable.upper()
        if not value or not upper.startswith(ENV_PREFIX) or upper in PACKAGE_VARIABLES:
            continue
        key = tuple(upper.removeprefix(ENV_PREFIX).lower().split(ENV_NESTED_DELIMITER))
        layer[key] = f"env {variable}"
        problem = _unknown_key(key)
        if problem:
            unknown.append(f"{problem} (from env {variable})")
    return layer, sorted(unknown)


def _unknown_key(path: _Path) -> str | None:
    """Why ``path`` names no setting of the model, or None when it names one."""
    model: type[BaseModel] = EventCompositionSettings
    for depth, name in enumerate(path):
        field = model.model_fields.get(name)
        if field is None:
            known = ", ".join(model.model_fields)
            return (
                f"{'.'.join(path[: depth + 1]) or '(empty)'}: unknown key; expected "
                f"one of: {known}"
            )
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
        elif depth < len(path) - 1:
            return f"{'.'.join(path)}: unknown key; {'.'.join(path[: depth + 1])} has no keys"
    return None


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
    problems.extend(plan.unknown_variables)
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
            f"invalid settings (environment {plan.environment!r}, settings folders "
            f"{', '.join(str(folder) for folder in plan.folders)}):\n"
            + "\n".join(f"  - {p}" for p in problems)
        )
    return settings


def _describe(error: ValidationError, layers: tuple[_Layer, ...]) -> list[str]:
    # include_input=False: the values given (a password among them) stay out.
    lines: list[str] = []
    for detail in error.errors(include_input=False, include_url=False):
        line = _describe_one(detail, layers)
        # An unknown key from a variable is already among the unknown variables.
        from_variable = "(from env " in line
        if line not in lines and not (
            detail["type"] == "extra_forbidden" and from_variable
        ):
            lines.append(line)
    return lines


def _describe_one(detail: ErrorDetails, layers: tuple[_Layer, ...]) -> str:
    path = tuple(str(part) for part in detail["loc"])
    message = detail["msg"].removeprefix("Value error, ")
    if detail["type"] == "time_delta_parsing":
        message = DURATION_HELP
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
