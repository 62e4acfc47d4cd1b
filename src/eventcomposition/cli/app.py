"""Finding the application's container from ``--app module:attribute``."""

import importlib
import os
import sys
from typing import Any

from dependency_injector import containers, providers

from ..containers import EventRuntimeContainer, build_container
from ..settings import EventCompositionSettings
from .errors import CommandError

DEFAULT_APP = "eventcomposition.containers:EventRuntimeContainer"


def load_app(path: str) -> object:
    """The object ``module:attribute`` names; the working directory is importable."""
    module_name, separator, attribute = path.partition(":")
    if not separator or not module_name or not attribute:
        raise CommandError(
            f"--app {path!r} is not of the form module:attribute "
            "(e.g. myapp.containers:AppContainer)"
        )
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise CommandError(
            f"cannot import the app module {module_name!r}: {error}"
        ) from None
    target: object = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise CommandError(
                f"the app module {module_name!r} has no attribute {attribute!r}"
            ) from None
    return target


def container_for(path: str, settings: EventCompositionSettings) -> Any:
    """Build the container ``path`` names over ``settings``.

    ``path`` names an ``EventRuntimeContainer`` subclass, or a callable that returns
    a container with the same providers (``settings``, ``runtime``).
    """
    target = load_app(path)
    if isinstance(target, type) and issubclass(target, EventRuntimeContainer):
        return build_container(target, settings)
    if isinstance(target, type) or not callable(target):
        raise CommandError(
            f"--app {path!r} is neither an EventRuntimeContainer subclass nor a "
            "callable returning a container"
        )
    container = target()
    if not isinstance(container, containers.Container) or not all(
        isinstance(getattr(container, name, None), providers.Provider)
        for name in ("settings", "runtime")
    ):
        raise CommandError(
            f"--app {path!r} returned {type(container).__name__}, not a container "
            "with 'settings' and 'runtime' providers (subclass EventRuntimeContainer)"
        )
    container.settings.override(providers.Object(settings))
    return container
