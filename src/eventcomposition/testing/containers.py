"""Building an application's container for one test, with overrides."""

from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

from dependency_injector import providers
from logicblocks.event.processing import EventBroker
from logicblocks.event.types import StoredEvent

from ..broker import InMemoryClusterState
from ..containers import EventRuntimeContainer, build_container, shutdown
from ..runtime import Registration
from ..settings import EventCompositionSettings, load_settings
from .postgres import ConnectionInfo


def postgres_overrides(database: ConnectionInfo) -> dict[str, Any]:
    """Settings overrides that point storage at ``database`` (e.g. a test fixture's)."""
    return {
        "storage": {
            "type": "postgres",
            "postgres": {
                "host": database.host,
                "port": database.port,
                "database": database.dbname,
                "user": database.user,
                "password": database.password,
            },
        }
    }


@asynccontextmanager
async def container_for_test[C: EventRuntimeContainer](
    container_class: type[C],
    *,
    settings: EventCompositionSettings | None = None,
    environment: str = "test",
    settings_dir: Path | str | None = None,
    broker: EventBroker[StoredEvent] | None = None,
    consumers: Sequence[Registration] | None = None,
    services: Sequence[AbstractAsyncContextManager[Any]] | None = None,
    cluster_state: InMemoryClusterState | None = None,
    **settings_overrides: Any,
) -> AsyncIterator[C]:
    """A container for one test; every resource it opened is released on exit.

    Settings are ``settings`` if given, else loaded for ``environment`` with
    ``settings_overrides`` (by section, e.g. ``node={"role": "observer"}``).
    ``broker`` replaces the broker (a mock, say), ``consumers`` the declared
    registrations, ``services`` the node's extra services, ``cluster_state`` the
    in-memory state (share one among the containers of nodes that should cooperate
    in memory).
    """
    resolved = settings or load_settings(
        environment, settings_dir=settings_dir, **settings_overrides
    )
    container = build_container(container_class, resolved)
    if broker is not None:
        container.broker.override(providers.Object(broker))
    if consumers is not None:
        container.consumers.override(
            providers.List(*(providers.Object(c) for c in consumers))
        )
    if services is not None:
        container.services.override(
            providers.List(*(providers.Object(s) for s in services))
        )
    if cluster_state is not None:
        container.cluster_state.override(providers.Object(cluster_state))
    try:
        yield container
    finally:
        await shutdown(container)
