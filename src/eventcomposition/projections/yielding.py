"""A rebuild gives way to the live version: the node's live work comes first.

A rebuild runs on a thread of the node's process (``threads``), beside the live
consumers on the node's event loop. Both need the interpreter (one thread runs
Python at a time) and the database. Flat out, the rebuild would hold the live
version's every step back: each time an answer to a live statement arrives, the
node's loop waits for the interpreter, which the rebuild's thread gives up only
every switch interval (5 ms by default), and live statements queue behind the
rebuild's at the database. So, while a rebuild runs on a node:

- ``LiveWork`` tells whether a live poll is in progress (set on the node's loop,
  read on the rebuild's thread);
- the rebuild's event loop (``YieldingLoop``) waits, before each of its
  iterations, while a live poll runs (blocked, holding neither the interpreter nor
  a core), at most ``longest`` seconds at a time, so that a busy live version
  slows the rebuild down but never stops it: the rebuild starts no statement and
  handles no result until the live poll has committed;
- the rebuild's thread runs at a lower scheduling priority
  (``lower_thread_priority``: its nice value raised, Linux only), so that when the
  node's loop and the rebuild both want a core the operating system runs the live
  steps first;
- the interpreter's switch interval is shortened (``while_rebuilding``), so
  that the node's loop gets the interpreter back within about a millisecond when
  the rebuild is in the middle of a step (decoding a batch, say);
- the objects the process holds when the rebuild starts are moved out of the
  garbage collector's sight (``freeze_long_lived``, ``gc.freeze``): the rebuild's
  many short-lived objects bring about a full collection every second or so,
  which otherwise scans the whole node (45 to 60 ms with the interpreter held,
  measured in the rebuild benchmark) and holds the live version up as long;
- the collector runs less often (``while_rebuilding``, ``REBUILD_GC_THRESHOLDS``):
  its young collections otherwise scan a batch's tens of thousands of live objects
  every 2000 allocations, a third of a rebuild's CPU.

The rebuild keeps its speed otherwise: it waits only while live work runs (a few
milliseconds per live batch), and a shorter switch interval costs nothing while no
other thread asks for the interpreter.
"""

import asyncio
import contextlib
import gc
import os
import sys
import threading
from collections.abc import Iterator

REBUILD_SWITCH_INTERVAL = 0.001
"""The interpreter's switch interval (seconds) while a rebuild runs in the process."""

REBUILD_GC_THRESHOLDS = (100_000, 50, 100)
"""The garbage collector's thresholds while a rebuild runs in the process (at
least; the interpreter's default is 2000, 10, 10): a rebuild's batches keep tens of
thousands of young objects alive at once (events, their payloads), which the
default has the collector scan again every 2000 allocations; almost all of them
are freed by reference counting anyway. In process, a rebuild's consumer ran 30
to 40% faster with these, its CPU per event from 9.8-12.7 to 6.4-8.2 us."""

REBUILD_NICENESS = 10
"""How much lower than the node's the rebuild thread's scheduling priority is
(its ``nice`` value added, Linux only)."""


class LiveWork:
    """Whether live polls are in progress on the node's loop; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running = 0
        self._idle = threading.Event()
        self._idle.set()

    @property
    def running(self) -> bool:
        return not self._idle.is_set()

    @contextlib.contextmanager
    def poll(self) -> Iterator[None]:
        """Mark a live poll in progress for the block's duration."""
        with self._lock:
            self._running += 1
            self._idle.clear()
        try:
            yield
        finally:
            with self._lock:
                self._running -= 1
                if self._running == 0:
                    self._idle.set()

    def wait_finished(self, longest: float) -> bool:
        """Block (the calling thread) until no live poll runs, at most ``longest``
        seconds; True if none runs."""
        return self._idle.wait(longest)


class YieldingLoop(asyncio.SelectorEventLoop):
    """The rebuild's event loop: before each iteration, while ``live`` work runs
    and ``yielding`` is on, it waits for it (at most ``longest`` seconds)."""

    def __init__(self, live: LiveWork, longest: float) -> None:
        super().__init__()
        self.live = live
        self.longest = longest
        self.yielding = True

    def _run_once(self) -> None:
        # asyncio's loop runs one iteration (select, then the ready callbacks) per
        # _run_once: the one place to wait before any of the rebuild's steps.
        if self.yielding and self.live.running:
            self.live.wait_finished(self.longest)
        super()._run_once()  # type: ignore[misc]

    @contextlib.contextmanager
    def not_yielding(self) -> Iterator[None]:
        """No waiting for live work within the block (a swap has frozen the live
        version: its poll waits for the swap, which must not wait for it)."""
        self.yielding = False
        try:
            yield
        finally:
            self.yielding = True


@contextlib.contextmanager
def not_yielding() -> Iterator[None]:
    """``YieldingLoop.not_yielding`` of the running loop, if it is one."""
    loop = asyncio.get_running_loop()
    if isinstance(loop, YieldingLoop):
        with loop.not_yielding():
            yield
    else:
        yield


def lower_thread_priority(niceness: int) -> bool:
    """Lower the calling thread's scheduling priority by ``niceness`` (Linux: each
    thread has its own nice value; elsewhere it would be the whole process's, so
    nothing changes). True if it did. Raising a nice value needs no privilege."""
    if niceness <= 0 or not sys.platform.startswith("linux"):
        return False
    thread = threading.get_native_id()
    try:
        current = os.getpriority(os.PRIO_PROCESS, thread)
        os.setpriority(os.PRIO_PROCESS, thread, min(19, current + niceness))
    except OSError:
        return False
    return True


def freeze_long_lived() -> None:
    """Move every object the garbage collector tracks now to its permanent
    generation (``gc.freeze``): later collections skip them. They are the node's
    long-lived objects (modules, classes, its containers and pools); the few that
    happen to be garbage at this moment stay in memory."""
    gc.freeze()


_tuning_lock = threading.Lock()
_tuning_users = 0
_switch_before = 0.0
_thresholds_before: tuple[int, int, int] = (0, 0, 0)


@contextlib.contextmanager
def while_rebuilding(
    switch_interval: float = REBUILD_SWITCH_INTERVAL,
    gc_thresholds: tuple[int, int, int] = REBUILD_GC_THRESHOLDS,
) -> Iterator[None]:
    """Within the block, the process's switch interval at most ``switch_interval``
    and its garbage collector's thresholds at least ``gc_thresholds`` (nested and
    concurrent blocks share them; the last to leave restores the originals)."""
    global _tuning_users, _switch_before, _thresholds_before
    with _tuning_lock:
        if _tuning_users == 0:
            _switch_before = sys.getswitchinterval()
            sys.setswitchinterval(min(switch_interval, _switch_before))
            _thresholds_before = gc.get_threshold()
            gc.set_threshold(
                *(
                    max(a, b)
                    for a, b in zip(gc_thresholds, _thresholds_before, strict=True)
                )
            )
        _tuning_users += 1
    try:
        yield
    finally:
        with _tuning_lock:
            _tuning_users -= 1
            if _tuning_users == 0:
                sys.setswitchinterval(_switch_before)
                gc.set_threshold(*_thresholds_before)
