"""Versioned projections: rebuild a projection beside the live one, swap atomically.

- ``VersionedProjection``: what an application declares (group, processor of each
  version, migrations of its tables, stable schema, grace period).
- ``make_versioned_consumer`` / ``VersionedConsumer``: the subscriber that runs the
  live version and, while a rebuild runs, the building one, over the same sources.
- ``ProjectionCatalog``: the ``projection_versions`` table and the operations on it
  (rebuild, cancel, drop, reset, swap), used by nodes and by the CLI.
- ``versions``: the states, names and rules, as plain values and functions.

Each name is imported from its module on first use, so that reading the catalog
(``cluster status``, ``projections list``) does not import the rebuild consumer.
"""

from typing import TYPE_CHECKING

from .._lazy import lazy_attributes

if TYPE_CHECKING:
    from .catalog import ProjectionCatalog
    from .consumer import (
        VersionedConsumer,
        VersionedProjection,
        VersionProcessor,
        make_versioned_consumer,
    )
    from .versions import (
        ProjectionError,
        ProjectionVersion,
        RebuildInProgressError,
        RebuildProgress,
        VersionState,
        checkpoint_group,
        stable_schema_name,
        version_schema_name,
    )

__all__ = [
    "ProjectionCatalog",
    "ProjectionError",
    "ProjectionVersion",
    "RebuildInProgressError",
    "RebuildProgress",
    "VersionProcessor",
    "VersionState",
    "VersionedConsumer",
    "VersionedProjection",
    "checkpoint_group",
    "make_versioned_consumer",
    "stable_schema_name",
    "version_schema_name",
]

__getattr__ = lazy_attributes(__name__, __file__)
