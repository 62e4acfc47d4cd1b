"""A rebuild's consumer on a thread of its own, with its own event loop and pool.

A rebuild reads and writes large batches: in the node's event loop, each batch's
parsing would hold the live consumers' turns back by tens of milliseconds at every
await. On its own thread the interpreter switches between the two, and the rebuild
gives way to the live version (``yielding``: its event loop waits while a live
poll runs, and the switch interval is shortened while it runs). The thread has its own
connection pool (psycopg's async connections belong to one event loop).
"""

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from logicblocks.event.sources import EventSource
from logicblocks.event.types import EventSourceIdentifier
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from ..consumers.transactional import TransactionalConsumer
from .catalog import ProjectionCatalog
from .yielding import (
    REBUILD_NICENESS,
    LiveWork,
    YieldingLoop,
    freeze_long_lived,
    lower_thread_priority,
    while_rebuilding,
)

type Pool = AsyncConnectionPool[AsyncConnection[Any]]
type Work = Callable[
    [TransactionalConsumer, ProjectionCatalog], Coroutine[Any, Any, None]
]

_JOIN_TIMEOUT = 30.0


class RebuildThread:
    """Runs ``work`` with the consumer ``make_consumer`` makes on the thread's own
    pool, until it returns or ``stop``; then releases the consumer's claims. Its event loop
    gives way to ``live`` work for up to ``yield_longest`` seconds before each
    iteration (see ``yielding``)."""

    def __init__(
        self,
        *,
        name: str,
        conninfo: str,
        make_consumer: Callable[[Pool], TransactionalConsumer],
        work: Work,
        live: LiveWork | None = None,
        yield_longest: float = 0.05,
        pool_size: int = 6,
        niceness: int = REBUILD_NICENESS,
    ) -> None:
        self._niceness = niceness
        self._live = live or LiveWork()
        self._yield_longest = yield_longest
        self._conninfo = conninfo
        self._make_consumer = make_consumer
        self._work = work
        self._pool_size = pool_size
        self._loop: asyncio.AbstractEventLoop | None = None
        self._consumer: TransactionalConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._started: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._released: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)

    async def start(
        self, sources: list[EventSource[EventSourceIdentifier, Any]]
    ) -> None:
        """Start the thread, its consumer holding ``sources``; raises what kept it
        from starting."""
        freeze_long_lived()
        self._thread.start()
        await asyncio.wrap_future(self._started)
        for source in sources:
            await self.accept(source)

    async def accept(self, source: EventSource[EventSourceIdentifier, Any]) -> None:
        consumer = self._consumer
        if consumer is not None:
            await self._call(consumer.accept(source))

    async def withdraw(self, source: EventSource[EventSourceIdentifier, Any]) -> None:
        consumer = self._consumer
        if consumer is not None:
            await self._call(consumer.withdraw(source))

    async def stop(self) -> None:
        """Stop the work (a batch in flight rolls back), release the claims, and
        wait for the thread to end."""
        self._cancel()
        if self._thread.is_alive():
            await asyncio.to_thread(self._thread.join, _JOIN_TIMEOUT)

    async def let_go(self) -> None:
        """Stop the work as ``stop`` does, but return as soon as the consumer's
        claims are released (or the work ended without them), before the thread
        has closed its pool: another consumer can claim the sources at once.
        ``stop`` still ends the thread."""
        self._cancel()
        if self._thread.is_alive():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.shield(asyncio.wrap_future(self._released)), _JOIN_TIMEOUT
                )

    def _cancel(self) -> None:
        loop, task = self._loop, self._task
        if loop is not None and task is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(task.cancel)

    async def _call(self, coroutine: Awaitable[None]) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            if asyncio.iscoroutine(coroutine):
                coroutine.close()
            return
        future = asyncio.run_coroutine_threadsafe(_awaited(coroutine), loop)
        await asyncio.wrap_future(future)

    def _main(self) -> None:
        lower_thread_priority(self._niceness)
        with while_rebuilding():
            asyncio.run(
                self._run(),
                loop_factory=lambda: YieldingLoop(self._live, self._yield_longest),
            )

    async def _run(self) -> None:
        try:
            pool: Pool = AsyncConnectionPool(
                self._conninfo, min_size=1, max_size=self._pool_size, open=False
            )
            await pool.open(wait=True, timeout=30)
        except BaseException as error:
            self._started.set_exception(error)
            self._released.set_result(None)
            return
        try:
            consumer = self._make_consumer(pool)
            self._consumer = consumer
            self._loop = asyncio.get_running_loop()
            self._task = asyncio.create_task(
                self._work(consumer, ProjectionCatalog(pool))
            )
            self._started.set_result(None)
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            await consumer.release_claims()
        finally:
            if not self._started.done():
                self._started.set_exception(RuntimeError("the rebuild did not start"))
            if not self._released.done():
                self._released.set_result(None)
            await pool.close()


async def _awaited(coroutine: Awaitable[None]) -> None:
    await coroutine
