"""The composition root: dependency-injector containers that declare a node.

``EventRuntimeContainer`` turns validated settings into a ready ``EventNode``:

    container = build_container(MyAppContainer, load_settings("production"))
    node = await container.node()        # not started; typed: await resolve(container.node)
    async with node:                     # opens the pool, starts runtime and services
        ...

Applications declare their consumers (and extra services) by subclassing the
container and redefining ``consumers`` (and ``services``), and tests override any
provider (``container.broker.override(mock)``). This package is the only one that
imports dependency-injector (with the container test support) and the only one that
chooses concrete classes; the command line and the demo reach it through the plain
functions below.
"""

import inspect
from collections.abc import Coroutine
from typing import Any, overload

from dependency_injector import containers, providers

from ..settings import EventCompositionSettings, load_settings
from .apps import (
    DEFAULT_APP,
    ApplicationError,
    application_consumers,
    application_container,
    application_migrations,
    node_for,
    open_event_store,
)
from .declarations import EventRuntimeContainer
from .mapping import broker_settings_from, consumer_settings_from

__all__ = [
    "DEFAULT_APP",
    "ApplicationError",
    "EventRuntimeContainer",
    "application_consumers",
    "application_container",
    "application_migrations",
    "broker_settings_from",
    "build_container",
    "consumer_settings_from",
    "node_for",
    "open_event_store",
    "resolve",
    "shutdown",
]


@overload
async def resolve[T](
    provider: providers.Provider[Coroutine[Any, Any, T]],
) -> T: ...


@overload
async def resolve[T](provider: providers.Provider[T]) -> T: ...


async def resolve(provider: providers.Provider[Any]) -> Any:
    """The provider's object, awaited when it depends on something async.

    dependency-injector hands out an awaitable from providers that depend on an
    async provider (the node, the runtime) and a plain object from the others,
    while its stubs always say the plain object. This works for both.
    """
    provided: Any = provider()
    if inspect.isawaitable(provided):
        provided = await provided
    return provided


async def shutdown(container: containers.Container) -> None:
    """Release what the container opened: the runtime resolved through ``runtime``
    is stopped and the database closed. A node entered with ``async with`` needs no
    shutdown."""
    pending = container.shutdown_resources()
    if inspect.isawaitable(pending):
        await pending


def build_container[C: EventRuntimeContainer](
    container_class: type[C],
    settings: EventCompositionSettings | None = None,
) -> C:
    """A container of ``container_class`` over ``settings`` (or loaded ones)."""
    container = container_class()
    container.settings.override(
        providers.Object(settings if settings is not None else load_settings())
    )
    return container
