"""Finding an application's container from ``module:attribute``, for entry points."""

import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, nullcontext
from typing import Any

from dependency_injector import containers, providers
from logicblocks.event.store import EventStore

from ..errors import EventCompositionError
from ..node import EventNode
from ..runtime import Registration
from ..schema import MigrationDeclaration
from ..settings import EventCompositionSettings
from .declarations import EventRuntimeContainer

DEFAULT_APP = "eventcomposition.containers:EventRuntimeContainer"


class ApplicationError(EventCompositionError):
    """``--app`` does not name a usable application container."""


def load_app(path: str) -> object:
    """The object ``module:attribute`` names; the working directory is importable."""
    module_name, separator, attribute = path.partition(":")
    if not separator or not module_name or not attribute:
        raise ApplicationError(
            f"--app {path!r} is not of the form module:attribute "
            "(e.g. myapp.containers:AppContainer)"
        )
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    check_module_exists(module_name)
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ApplicationError(
            f"cannot import the app module {module_name!r}: {error}"
        ) from None
    target: object = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ApplicationError(
                f"the app module {module_name!r} has no attribute {attribute!r}"
            ) from None
    return target


def check_module_exists(module_name: str) -> None:
    """Raise ``ApplicationError`` unless ``module_name`` can be found.

    Looks the name up level by level, importing only packages on its path (a
    plain module such as Python's ``this`` is never run just to be probed).
    """
    parts = module_name.split(".")
    for depth in range(1, len(parts) + 1):
        prefix = ".".join(parts[:depth])
        if prefix in sys.modules:
            continue  # imported already (``os.path`` is no package's submodule)
        try:
            spec = importlib.util.find_spec(prefix)
        except (ImportError, ValueError) as error:
            raise ApplicationError(
                f"cannot import the app module {module_name!r}: {error}"
            ) from None
        if spec is None:
            raise ApplicationError(
                f"cannot import the app module {module_name!r}: no module named "
                f"{prefix!r} (is the application installed, or run from its folder?)"
            )
        if depth < len(parts) and spec.submodule_search_locations is None:
            raise ApplicationError(
                f"cannot import the app module {module_name!r}: {prefix!r} is a "
                "module, not a package"
            )


def application_container(path: str, settings: EventCompositionSettings) -> Any:
    """The container ``path`` names, built over ``settings``.

    ``path`` names an ``EventRuntimeContainer`` subclass, or a callable that returns
    a container with the same providers (``settings``, ``node``).
    """
    target = load_app(path)
    if isinstance(target, type) and issubclass(target, EventRuntimeContainer):
        container: Any = target()
    elif isinstance(target, type) or not callable(target):
        raise ApplicationError(
            f"--app {path!r} is neither an EventRuntimeContainer subclass nor a "
            "callable returning a container"
        )
    else:
        try:
            container = target()
        except Exception as error:
            raise ApplicationError(
                f"--app {path!r} failed when called: {type(error).__name__}: "
                f"{error} (it should return the application's container)"
            ) from None
        if not isinstance(container, containers.Container) or not all(
            isinstance(getattr(container, name, None), providers.Provider)
            for name in ("settings", "node")
        ):
            raise ApplicationError(
                f"--app {path!r} returned {type(container).__name__}, not a "
                "container with 'settings' and 'node' providers (subclass "
                "EventRuntimeContainer)"
            )
    container.settings.override(providers.Object(settings))
    return container


@asynccontextmanager
async def application_consumers(
    path: str, settings: EventCompositionSettings
) -> AsyncIterator[Sequence[Registration]]:
    """The consumers the application ``path`` declares, with its database open.

    For commands that work with an application's consumers outside a running node
    (``dead-letters retry``).
    """
    container = application_container(path, settings)
    database = container.database()
    async with database if database is not None else nullcontext():
        consumers: Sequence[Registration] = container.consumers()
        yield consumers


@asynccontextmanager
async def open_event_store(
    settings: EventCompositionSettings,
    container_class: type[EventRuntimeContainer] = EventRuntimeContainer,
) -> AsyncIterator[EventStore]:
    """The event store ``settings`` describe, open until the block ends.

    For scripts and one-off jobs that read or publish events without running a
    node: on PostgreSQL the connection pool is opened (waiting for the server as a
    node does) and closed on exit; in memory the store is an empty one of this
    process. ``container_class`` is the application's container when it
    redefines the store.
    """
    container = container_class()
    container.settings.override(providers.Object(settings))
    database = container.database()
    async with database if database is not None else nullcontext():
        store: EventStore = container.event_store()
        yield store


def application_migrations(
    path: str, settings: EventCompositionSettings
) -> list[MigrationDeclaration]:
    """The migrations the application ``path`` declares, in order."""
    declared: Sequence[MigrationDeclaration] = application_container(
        path, settings
    ).migrations()
    return list(declared)


async def node_for(path: str, settings: EventCompositionSettings) -> EventNode:
    """The node of the application ``path`` names, over ``settings``; not started."""
    provided = application_container(path, settings).node()
    node: EventNode = await provided if inspect.isawaitable(provided) else provided
    return node
