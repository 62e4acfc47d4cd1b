"""A rebuild reads only what the live version has applied: it trails, never overtakes.

So an event a rebuild applies is one the live version applied already (its side
effects happened: ``transaction.rebuilding`` is exactly that), and at the swap,
which freezes the live version, the rebuild stops at the very same events. What
comes after is applied by the new version as the live one, with ``rebuilding``
False.
"""

from collections.abc import Callable, Mapping, Sequence, Set

from logicblocks.event.types import EventSourceIdentifier, StoredEvent

from ..consumers.source_keys import source_key
from ..consumers.stores import CheckpointStore, EventReader


class TrailingReader(EventReader):
    """Reads a source up to the live version's checkpoint of it (nothing of a
    source the live version has not checkpointed).

    A live checkpoint only moves forward, so a bound read once stays safe: while
    a source's reads are below it (catching up), they use it without asking the
    database again; the bound is read anew only once reached."""

    def __init__(
        self,
        inner: EventReader,
        checkpoint_store: CheckpointStore,
        live_group: Callable[[], str],
    ) -> None:
        self._inner = inner
        self._checkpoints = checkpoint_store
        self._live_group = live_group
        self._bounds: dict[tuple[str, str], int] = {}

    async def read(
        self, source: EventSourceIdentifier, *, after: int | None, limit: int
    ) -> Sequence[StoredEvent]:
        key = (self._live_group(), source_key(source))
        bound = self._bounds.get(key)
        if bound is None or after is None or after >= bound:
            bound = await self._checkpoints.position(*key)
            if bound is None:
                return []
            self._bounds[key] = bound
        if after is not None and after >= bound:
            return []
        events = await self._inner.read(source, after=after, limit=limit)
        return [event for event in events if event.sequence_number <= bound]

    async def refresh(self) -> None:
        # The wrapped reader stops at the visibility horizon: take the round's.
        await self._inner.refresh()

    async def held_back(
        self, positions: Mapping[EventSourceIdentifier, int | None]
    ) -> Set[EventSourceIdentifier]:
        return await self._inner.held_back(positions)

    async def heads(
        self, sources: Sequence[EventSourceIdentifier]
    ) -> Mapping[EventSourceIdentifier, int | None] | None:
        heads = await self._inner.heads(sources)
        if heads is None:
            return None
        bounds = await self._checkpoints.positions(self._live_group())
        return {
            source: _lower(heads.get(source), bounds.get(source_key(source)))
            for source in sources
        }


def _lower(head: int | None, bound: int | None) -> int | None:
    if head is None or bound is None:
        return None
    return min(head, bound)
