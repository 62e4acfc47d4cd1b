"""The nemesis: faults injected at seeded random moments, one after another and
sometimes overlapping, each recorded as a ``Fault`` (with the sources it should
hold up) once it is healed.

One ``random.Random(seed)`` decides every choice: which kind, which target, how
long, when the next comes and whether it waits for the one in progress. What it
cannot decide (the moment a batch is at when a signal lands) makes runs of one
seed alike rather than identical; a seed that found a fault finds it again in a
few tries.
"""

import asyncio
import contextlib
import random
import signal
import time
from collections.abc import Sequence
from typing import Any

import psycopg
import structlog
from psycopg import AsyncConnection

from .app import CATEGORIES, GROUP
from .cluster import MAX_CONNECTIONS, Cluster, Pool, probe_ready
from .history import Fault, FaultKind, Readiness

logger = structlog.get_logger("eventcomposition.chaos")

# The share of faults that start while another is still in progress.
OVERLAP_CHANCE = 0.3
# How often the readiness of a partitioned node is asked.
PROBE_INTERVAL = 0.25
READY_AGAIN_TIMEOUT = 30.0


class Nemesis:
    """Injects faults of ``kinds`` into ``cluster`` until ``stop`` is set."""

    def __init__(
        self,
        cluster: Cluster,
        pool: Pool,
        *,
        seed: int,
        kinds: Sequence[FaultKind],
        mean_gap: float = 4.0,
    ) -> None:
        self.cluster = cluster
        self.pool = pool
        self.random = random.Random(seed)
        self.kinds = list(kinds)
        self.mean_gap = mean_gap
        self.faults: list[Fault] = []
        self.readiness: list[Readiness] = []
        self.errors: list[str] = []
        self._busy: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._next_kinds: list[FaultKind] = []
        self._blocking: dict[str, str] = {}

    async def run(self, stop: asyncio.Event) -> None:
        """Inject faults until ``stop``; then wait for those in progress to heal.

        Every kind comes once, in a seeded order, before any comes again, so
        that a short run still covers them all."""
        while not stop.is_set():
            gap = self.random.uniform(0.5, 1.5) * self.mean_gap
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), gap)
            if stop.is_set():
                break
            kind = self._next_kind()
            target = await self._target(kind)
            if target is None:
                continue
            task = asyncio.create_task(self._inject(kind, target))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            if self.random.random() >= OVERLAP_CHANCE:
                await asyncio.wait({task})
        if self._tasks:
            await asyncio.wait(set(self._tasks))

    def _next_kind(self) -> FaultKind:
        if not self._next_kinds:
            self._next_kinds = list(self.kinds)
            self.random.shuffle(self._next_kinds)
        return self._next_kinds.pop()

    async def _target(self, kind: FaultKind) -> str | None:
        if kind in (FaultKind.DB_RESTART, FaultKind.DB_CRASH, FaultKind.EXHAUST):
            return None if "postgres" in self._busy else "postgres"
        observers = [n for n in self.cluster.observers if n not in self._busy]
        # A fault of a node: an observer, or now and then the leading coordinator
        # (which holds no source to block).
        if kind is not FaultKind.BLOCK and self.random.random() < 0.25:
            leader = await self.cluster.leader(self.pool)
            if leader is not None and leader not in self._busy:
                return leader
        # Keep one observer untouched, so that someone can take over.
        if len(observers) <= 1:
            return None
        return self.random.choice(observers)

    async def _inject(self, kind: FaultKind, target: str) -> None:
        self._busy.add(target)
        try:
            affected = await self._affected(kind, target)
            started = time.time()
            await logger.awarning("chaos.fault", kind=str(kind), target=target)
            await self._fault(kind, target)
            self.faults.append(
                Fault(
                    kind=kind,
                    target=target,
                    started=started,
                    ended=time.time(),
                    affected=affected,
                    coordinator=target in self.cluster.coordinators,
                )
            )
        except Exception as error:  # recorded: the run fails on it
            self.errors.append(f"{kind} of {target}: {type(error).__name__}: {error}")
        finally:
            self._busy.discard(target)

    async def _affected(self, kind: FaultKind, target: str) -> tuple[str, ...]:
        if target == "postgres":
            return tuple(CATEGORIES)
        held = await self.cluster.held_by(self.pool, target)
        if kind is FaultKind.BLOCK and held:
            # One source blocked; the node's others are those it must not hold up.
            blocked = self.random.choice(held)
            self._blocking[target] = blocked
            return tuple(source for source in held if source != blocked)
        return held

    async def _fault(self, kind: FaultKind, target: str) -> None:
        lease = self.cluster.timings.claim_lease
        match kind:
            case FaultKind.KILL | FaultKind.TERM:
                await self._stop_and_restart(kind, target)
            case FaultKind.PAUSE:
                process = self.cluster.running[target]
                process.send_signal(signal.SIGSTOP)
                try:
                    await asyncio.sleep(lease + self.random.uniform(1.0, 4.0))
                finally:
                    process.send_signal(signal.SIGCONT)
            case FaultKind.PARTITION:
                await self._partition(target, lease + self.random.uniform(2.0, 8.0))
            case FaultKind.DB_RESTART:
                await asyncio.to_thread(self.cluster.restart_server)
            case FaultKind.DB_CRASH:
                await asyncio.to_thread(self.cluster.crash_server)
                await asyncio.sleep(self.random.uniform(0.0, 2.0))
                await asyncio.to_thread(self.cluster.start_server)
            case FaultKind.EXHAUST:
                await self._exhaust(self.random.uniform(2.0, 6.0))
            case FaultKind.BLOCK:
                blocked = self._blocking.pop(target, None)
                if blocked is not None:
                    await self._block(blocked, lease + self.random.uniform(2.0, 5.0))

    async def _stop_and_restart(self, kind: FaultKind, target: str) -> None:
        process = self.cluster.running[target]
        if kind is FaultKind.KILL:
            process.kill()
        else:
            process.terminate()
        await process.await_exit(self.cluster.timings.batch_timeout + 15)
        await asyncio.sleep(self.random.uniform(1.0, 4.0))
        self.cluster.start_node(target)

    async def _partition(self, target: str, seconds: float) -> None:
        network = self.cluster.network
        cut_at = time.time()
        await asyncio.to_thread(network.cut, target)
        not_ready_at: float | None = None
        try:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                if not_ready_at is None and not await asyncio.to_thread(
                    probe_ready, self.cluster, target
                ):
                    not_ready_at = time.time()
                await asyncio.sleep(PROBE_INTERVAL)
        finally:
            await asyncio.to_thread(network.heal, target)
        healed_at = time.time()
        ready_again_at: float | None = None
        deadline = time.monotonic() + READY_AGAIN_TIMEOUT
        while time.monotonic() < deadline:
            if await asyncio.to_thread(probe_ready, self.cluster, target):
                ready_again_at = time.time()
                break
            await asyncio.sleep(PROBE_INTERVAL)
        self.readiness.append(
            Readiness(target, cut_at, not_ready_at, healed_at, ready_again_at)
        )

    async def _exhaust(self, seconds: float) -> None:
        """Take every connection slot the server has free, hold them, let go."""
        taken: list[AsyncConnection[Any]] = []
        conninfo = self.cluster.database_info.conninfo
        try:
            for _ in range(MAX_CONNECTIONS):
                try:
                    taken.append(
                        await AsyncConnection.connect(conninfo, connect_timeout=2)
                    )
                except psycopg.OperationalError:
                    break
            await asyncio.sleep(seconds)
        finally:
            for connection in taken:
                with contextlib.suppress(psycopg.Error):
                    await connection.close()

    async def _block(self, source: str, seconds: float) -> None:
        """Hold ``source``'s checkpoint row locked for ``seconds``: its holder's
        next commit waits on it (holding its own claim row, so nobody takes the
        source over), as a source blocked on a lock of the application's would."""
        with contextlib.suppress(psycopg.Error, TimeoutError):
            async with self.pool.connection() as connection:
                async with asyncio.timeout(2):
                    await connection.execute(
                        "SELECT 1 FROM consumer_checkpoints "
                        'WHERE "group" = %s AND source = %s FOR UPDATE',
                        (GROUP, source),
                    )
                await asyncio.sleep(seconds)
                await connection.rollback()
