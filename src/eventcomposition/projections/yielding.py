"""A rebuild gives way to the live version: the node's live work comes first.

A rebuild runs on a thread of the node's process (``threads``), beside the live
consumers on the node's event loop. Both need the interpreter (one thread runs
Python at a time) and the database. Flat out, the rebuild would hold the live
version's every step back: each time a live statement's answer arrives, the node's
loop waits for the interpreter, which the rebuild's thread gives up only every
switch interval (5 ms by default), and each live statement queues behind the
rebuild's at the database. So, while a rebuild runs on a node:

- ``LiveWork`` counts the live consumers' polls in progress (set on the node's
  loop, read on the rebuild's thread);
- the rebuild's pool (``YieldingPool``) hands out no connection while a live poll
  runs (up to ``longest`` seconds, so that a busy live version slows the rebuild
  down but never stops it): the rebuild starts no statement, and no work on its
  results, until the live poll has committed;
- the interpreter's switch interval is shortened (``shorter_switch_interval``),
  so that the node's loop gets the interpreter back within about a millisecond of
  an answer, not five.

The rebuild keeps its speed: it waits only while live work runs (a few
milliseconds per live batch), and a shorter switch interval costs nothing while
no other thread asks for the interpreter.
"""

import asyncio
import contextlib
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

REBUILD_SWITCH_INTERVAL = 0.001
"""The interpreter's switch interval (seconds) while a rebuild runs in the process."""

_CHECK_EVERY = 0.001


class LiveWork:
    """How many live polls are in progress on the node's loop; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running = 0

    @property
    def running(self) -> bool:
        return self._running > 0

    @contextlib.contextmanager
    def poll(self) -> Iterator[None]:
        """Mark a live poll in progress for the block's duration."""
        with self._lock:
            self._running += 1
        try:
            yield
        finally:
            with self._lock:
                self._running -= 1

    async def finished(self, longest: float) -> None:
        """Return once no live poll runs, or after ``longest`` seconds."""
        if not self.running:
            return
        deadline = time.monotonic() + longest
        # Live polls run on another thread's loop: no asyncio.Event can tell.
        while self.running and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(_CHECK_EVERY)


class YieldingPool(AsyncConnectionPool[AsyncConnection[Any]]):
    """A connection pool whose ``getconn`` first waits for ``live`` work to finish
    (at most ``longest`` seconds), unless ``yielding`` is off (a swap, which has
    frozen the live version, must not wait for it)."""

    def __init__(
        self, conninfo: str, *, live: LiveWork, longest: float, **kwargs: Any
    ) -> None:
        super().__init__(conninfo, **kwargs)
        self.live = live
        self.longest = longest
        self.yielding = True

    async def getconn(self, timeout: float | None = None) -> AsyncConnection[Any]:  # noqa: ASYNC109
        if self.yielding:
            await self.live.finished(self.longest)
        return await super().getconn(timeout)

    @contextlib.contextmanager
    def not_yielding(self) -> Iterator[None]:
        """No waiting for live work within the block."""
        self.yielding = False
        try:
            yield
        finally:
            self.yielding = True


_switch_lock = threading.Lock()
_switch_users = 0
_switch_before = 0.0


@contextlib.contextmanager
def shorter_switch_interval(seconds: float = REBUILD_SWITCH_INTERVAL) -> Iterator[None]:
    """The process's switch interval at most ``seconds`` within the block (nested
    and concurrent blocks share it; the last to leave restores the original)."""
    global _switch_users, _switch_before
    with _switch_lock:
        if _switch_users == 0:
            _switch_before = sys.getswitchinterval()
            sys.setswitchinterval(min(seconds, _switch_before))
        _switch_users += 1
    try:
        yield
    finally:
        with _switch_lock:
            _switch_users -= 1
            if _switch_users == 0:
                sys.setswitchinterval(_switch_before)
