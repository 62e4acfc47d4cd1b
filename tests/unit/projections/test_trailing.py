"""A rebuild's reader stops at the live version's checkpoint of each source."""

from collections.abc import Mapping, Sequence
from datetime import timedelta

from logicblocks.event.store import EventStore, InMemoryEventStorageAdapter
from logicblocks.event.types import CategoryIdentifier, EventSourceIdentifier, NewEvent

from eventcomposition.consumers import Holder, InMemoryCheckpointStore, StoreEventReader
from eventcomposition.projections.trailing import TrailingReader

LEFT = CategoryIdentifier(category="left")
RIGHT = CategoryIdentifier(category="right")


class HeadsOf(StoreEventReader):
    def __init__(self, store: EventStore, heads: Mapping[str, int]) -> None:
        super().__init__(store)
        self._heads = heads

    async def heads(
        self, sources: Sequence[EventSourceIdentifier]
    ) -> Mapping[EventSourceIdentifier, int | None]:
        return {
            source: self._heads.get(getattr(source, "category", ""))
            for source in sources
        }


async def live_at(store: InMemoryCheckpointStore, source: str, position: int) -> None:
    claim = await store.claim("live", source, Holder("n", "s"), timedelta(seconds=9))
    assert claim is not None
    async with store.transaction() as transaction:
        await store.advance(transaction, claim, position, timedelta(seconds=9))


async def test_reads_stop_at_the_live_checkpoint() -> None:
    events = EventStore(adapter=InMemoryEventStorageAdapter())
    await events.stream(category="left", stream="s").publish(
        events=[NewEvent(name="e", payload={"n": n}) for n in range(10)]
    )
    checkpoints = InMemoryCheckpointStore()
    reader = TrailingReader(
        HeadsOf(events, {"left": 9, "right": 4}), checkpoints, lambda: "live"
    )

    assert await reader.read(LEFT, after=None, limit=100) == []  # live: nothing yet
    await live_at(checkpoints, "left", 5)
    first = await reader.read(LEFT, after=None, limit=100)
    assert [event.sequence_number for event in first] == [0, 1, 2, 3, 4, 5]
    assert await reader.read(LEFT, after=5, limit=100) == []
    assert [e.sequence_number for e in await reader.read(LEFT, after=2, limit=2)] == [
        3,
        4,
    ]
    assert await reader.heads([LEFT, RIGHT]) == {LEFT: 5, RIGHT: None}


class Rounds(HeadsOf):
    """Counts the poll rounds' horizon refreshes and answers held_back."""

    def __init__(self, store: EventStore) -> None:
        super().__init__(store, {})
        self.refreshes = 0

    async def refresh(self) -> None:
        self.refreshes += 1

    async def held_back(
        self, positions: Mapping[EventSourceIdentifier, int | None]
    ) -> frozenset[EventSourceIdentifier]:
        return frozenset(positions)


async def test_each_round_refreshes_the_wrapped_readers_horizon() -> None:
    # Without it the wrapped PostgreSQL reader kept its first horizon for good, and
    # a rebuild never caught up with what was published after it started.
    inner = Rounds(EventStore(adapter=InMemoryEventStorageAdapter()))
    reader = TrailingReader(inner, InMemoryCheckpointStore(), lambda: "live")

    await reader.refresh()
    await reader.refresh()

    assert inner.refreshes == 2
    assert await reader.held_back({LEFT: 3}) == {LEFT}


class CountingCheckpoints(InMemoryCheckpointStore):
    def __init__(self) -> None:
        super().__init__()
        self.asked = 0

    async def position(self, group: str, source: str) -> int | None:
        self.asked += 1
        return await super().position(group, source)


async def test_a_bound_is_read_again_only_once_reached() -> None:
    events = EventStore(adapter=InMemoryEventStorageAdapter())
    await events.stream(category="left", stream="s").publish(
        events=[NewEvent(name="e", payload={"n": n}) for n in range(10)]
    )
    checkpoints = CountingCheckpoints()
    reader = TrailingReader(HeadsOf(events, {}), checkpoints, lambda: "live")
    await live_at(checkpoints, "left", 5)

    read = [e.sequence_number for e in await reader.read(LEFT, after=None, limit=2)]
    read += [e.sequence_number for e in await reader.read(LEFT, after=1, limit=2)]
    read += [e.sequence_number for e in await reader.read(LEFT, after=3, limit=9)]
    assert read == [0, 1, 2, 3, 4, 5]
    assert checkpoints.asked == 1  # catching up below the bound: no more questions

    await live_at(checkpoints, "left", 8)
    assert [e.sequence_number for e in await reader.read(LEFT, after=5, limit=9)] == [
        6,
        7,
        8,
    ]
    assert checkpoints.asked == 2
