"""What other components read of a checkpoint store.

- ``ClaimReleaseCheck``: the balancing coordinator's ``ReleaseCheck``; a source
  revoked from its holder counts as released once no subscriber claims it.
- ``checkpoint_reader``: the node's lag reads every held source's checkpoint at once.
"""

from collections.abc import Collection, Mapping, Sequence, Set
from itertools import groupby
from operator import attrgetter

from logicblocks.event.types import EventSourceIdentifier

from ..lag import CheckpointReader, HeldSource
from .claims import key_of
from .stores import CheckpointStore


class ClaimReleaseCheck:
    """Which revoked sources of a group no subscriber claims any more."""

    def __init__(self, store: CheckpointStore) -> None:
        self._store = store

    async def released(
        self, group: str, sources: Collection[EventSourceIdentifier]
    ) -> Set[EventSourceIdentifier]:
        return {
            source for source in sources if await self._store.is_released(group, source)
        }


def checkpoint_reader(store: CheckpointStore) -> CheckpointReader:
    """Reads the checkpoints of held sources, one query per subscriber group."""

    async def read(held: Sequence[HeldSource]) -> Mapping[HeldSource, int | None]:
        checkpoints: dict[HeldSource, int | None] = {}
        by_group = attrgetter("group")
        for group, holdings in groupby(sorted(held, key=by_group), key=by_group):
            positions = await store.positions(group)
            for holding in holdings:
                checkpoints[holding] = positions.get(key_of(holding.source))
        return checkpoints

    return read
