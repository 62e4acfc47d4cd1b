"""11. Writes: 4 concurrent writers under the LOG and the STREAM guarantee.

What gap-safe reading buys: under logicblocks' default ``LOG`` serialisation
guarantee one advisory lock around every write makes writers take turns (and
sequence numbers commit in order); under ``STREAM`` writers to different streams run
at once, and only gap-safe readers (``docs/concepts/gap-safe-reading.md``) keep
their consumers from skipping events that commit out of order.

Per guarantee, ``WRITERS`` asyncio tasks in this process, each with its own pooled
connection and its own stream of one category, publish through
``PostgresEventStorageAdapter(serialisation_guarantee=...)`` for a fixed time, one
publish (one transaction) after another, of 1 event and of 10 events each. The
figure is events committed per second, all writers together. Both guarantees run on
one database of the run's throwaway server, alternating, so they share its state.
"""

import asyncio
import time
from typing import Any

from logicblocks.event.store import EventStore, PostgresEventStorageAdapter
from logicblocks.event.store.adapters.base import EventSerialisationGuarantee
from logicblocks.event.types import NewEvent

from .cluster import open_pool
from .common import BenchContext, PostgresUnavailable, Spread, say, table

NAME = "writes"
WRITERS = 4
GUARANTEES: dict[str, Any] = {
    "LOG": EventSerialisationGuarantee.LOG,
    "STREAM": EventSerialisationGuarantee.STREAM,
}


async def _write_for(store: EventStore, writer: int, batch: int, seconds: float) -> int:
    stream = store.stream(category="writes", stream=f"writer-{writer}")
    written = 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        await stream.publish(
            events=[NewEvent(name="written", payload={"n": n}) for n in range(batch)]
        )
        written += batch
    return written


async def _rate(pool: Any, guarantee: Any, batch: int, seconds: float) -> float:
    store = EventStore(
        adapter=PostgresEventStorageAdapter(
            connection_source=pool, serialisation_guarantee=guarantee
        )
    )
    started = time.perf_counter()
    counts = await asyncio.gather(
        *(_write_for(store, writer, batch, seconds) for writer in range(WRITERS))
    )
    return sum(counts) / (time.perf_counter() - started)


async def run(ctx: BenchContext) -> None:
    seconds = 3.0 if ctx.quick else 10.0
    reps = 1 if ctx.quick else 3
    say("\n== 11. Writes: 4 concurrent writers under LOG and STREAM ==")
    say(
        f"{WRITERS} writers (asyncio tasks, one pooled connection each, one stream "
        f"each), {seconds:.0f} s per measurement, {reps} repetition(s), alternating."
    )
    try:
        database = await ctx.postgres.new_database()
    except PostgresUnavailable as error:
        say(f"skipped: {error}")
        return
    pool = await open_pool(database)
    rates: dict[tuple[str, int], list[float]] = {}
    try:
        await pool.resize(min_size=WRITERS, max_size=WRITERS)
        for batch in (1, 10):
            for _ in range(reps):
                for name, guarantee in GUARANTEES.items():
                    rate = await _rate(pool, guarantee, batch, seconds)
                    rates.setdefault((name, batch), []).append(rate)
    finally:
        await pool.close()

    rows = []
    for batch in (1, 10):
        log = Spread.of(rates[("LOG", batch)])
        stream = Spread.of(rates[("STREAM", batch)])
        rows.append(
            [
                f"{batch} per publish",
                log.text(".0f"),
                stream.text(".0f"),
                f"{stream.median / log.median:.2f}",
            ]
        )
    say(
        table(
            "events/s, all writers together (min / median / max)",
            ["publish size", "LOG", "STREAM", "STREAM / LOG"],
            rows,
        )
    )
    ctx.save(
        NAME,
        {
            "writers": WRITERS,
            "seconds": seconds,
            "events_per_second": {
                f"{name}/{batch}": Spread.of(values).as_json()
                for (name, batch), values in rates.items()
            },
        },
    )
