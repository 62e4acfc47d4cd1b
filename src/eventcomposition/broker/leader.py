"""Who leads: the coordinator's advisory lock key, and the node holding it.

A light module (psycopg only): ``cluster status`` asks who leads without importing
logicblocks' processing package, and the broker's lock manager
(``leadership.CheckedPostgresLockManager``) takes its locks under the keys
``advisory_lock_key`` computes here, so both agree by construction.

The lock's name and the way a name becomes a key are logicblocks' (its
``DefaultEventSubscriptionCoordinator`` takes the lock, its ``PostgresLockManager``
derives the key): mixed clusters, our coordinators beside logicblocks' own, contend
for one lock. Both are repeated here rather than imported, because importing them
imports the whole processing package; ``tests/unit/broker/test_logicblocks_pins.py``
pins that they equal the library's.
"""

import hashlib
from dataclasses import dataclass
from typing import Any

from psycopg import AsyncConnection

COORDINATOR_LOCK_NAME = (
    "logicblocks.event.processing.broker.strategies.distributed.coordinator."
    "DefaultEventSubscriptionCoordinator"
)
"""The name of the coordinator's leadership lock (logicblocks' ``LOCK_NAME``)."""

LOCK_HOLDER_APPLICATION_PREFIX = "coordinator:"
"""Prefix of the ``application_name`` of the connection holding a node's locks."""


def advisory_lock_key(lock_name: str) -> int:
    """The PostgreSQL advisory lock key of ``lock_name``, as logicblocks derives it
    (``get_digest``): the SHA-256 of its UTF-8 bytes modulo 10**16."""
    return int(hashlib.sha256(lock_name.encode("utf-8")).hexdigest(), 16) % 10**16


COORDINATOR_LOCK_KEY = advisory_lock_key(COORDINATOR_LOCK_NAME)
"""The advisory lock key of the coordinator's leadership."""

# A bigint advisory key shows in pg_locks split into classid (high 32 bits) and
# objid (low 32 bits), with objsubid 1.
_LEADER_QUERY = """
    SELECT l.pid, a.application_name
    FROM pg_locks l LEFT JOIN pg_stat_activity a USING (pid)
    WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND (l.classid::bigint << 32 | l.objid::bigint) = %s
"""


@dataclass(frozen=True)
class CoordinatorLeader:
    """The server process holding the coordinator's lock, and its node when known.

    ``node_id`` is None when the lock's connection carries no node id (logicblocks'
    own lock manager does not tag it). PostgreSQL keeps only the first 63 bytes of
    an ``application_name``, so a very long node id shows cut.
    """

    pid: int
    node_id: str | None


async def leading_coordinator(
    connection: AsyncConnection[Any],
) -> CoordinatorLeader | None:
    """Who holds the coordinator's leadership lock in this database, if anyone.

    Only the coordinator's own lock counts: other advisory locks (a migration in
    progress, an application's) do not make a leader.
    """
    cursor = await connection.execute(_LEADER_QUERY, [COORDINATOR_LOCK_KEY])
    row = await cursor.fetchone()
    if row is None:
        return None
    pid, application_name = row
    node_id = None
    if application_name and application_name.startswith(LOCK_HOLDER_APPLICATION_PREFIX):
        node_id = application_name.removeprefix(LOCK_HOLDER_APPLICATION_PREFIX)
    return CoordinatorLeader(pid=int(pid), node_id=node_id)
