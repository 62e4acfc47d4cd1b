"""A rebuild gives way to the live version's polls (``projections.yielding``)."""

import asyncio
import gc
import os
import sys
import threading
import time

from eventcomposition.projections.yielding import (
    LiveWork,
    YieldingLoop,
    freeze_long_lived,
    lower_thread_priority,
    not_yielding,
    while_rebuilding,
)


def test_the_rebuilds_loop_waits_while_a_live_poll_runs() -> None:
    live = LiveWork()
    loop = YieldingLoop(live, longest=5.0)
    ended_at: list[float] = []
    polling = threading.Event()

    def poll_on_another_thread() -> None:
        with live.poll():
            polling.set()
            time.sleep(0.2)
            ended_at.append(time.monotonic())

    async def a_step() -> float:
        await asyncio.sleep(0)
        return time.monotonic()

    try:
        started = time.monotonic()
        loop.run_until_complete(a_step())
        assert time.monotonic() - started < 1.0  # nothing live runs: no wait

        thread = threading.Thread(target=poll_on_another_thread)
        thread.start()
        assert polling.wait(5.0)
        stepped_at = loop.run_until_complete(a_step())
        thread.join()
    finally:
        loop.close()
    assert not live.running
    assert ended_at, "the live poll did not end"
    assert stepped_at >= ended_at[0]  # the step waited for the live poll
    assert stepped_at - ended_at[0] < 2.0  # and not for the whole 5 s


def test_the_wait_is_bounded_and_a_swap_does_not_wait() -> None:
    live = LiveWork()
    loop = YieldingLoop(live, longest=0.05)

    async def a_step() -> None:
        await asyncio.sleep(0)

    async def a_swap_step() -> None:
        with not_yielding():
            for _ in range(20):  # 20 iterations: 1 s if each waited
                await asyncio.sleep(0)

    try:
        with live.poll():
            started = time.monotonic()
            loop.run_until_complete(a_step())
            waited = time.monotonic() - started
            started = time.monotonic()
            loop.run_until_complete(a_swap_step())
            swapping = time.monotonic() - started
    finally:
        loop.close()
    assert 0.05 <= waited < 1.0
    assert swapping < 0.5


def test_the_switch_interval_is_shorter_and_collections_rarer_while_any_rebuild_runs() -> (
    None
):
    original = sys.getswitchinterval()
    thresholds = gc.get_threshold()
    with while_rebuilding(0.001, (100_000, 50, 100)):
        assert sys.getswitchinterval() == 0.001
        assert gc.get_threshold() == (100_000, 50, 100)
        with while_rebuilding(0.001, (100_000, 50, 100)):
            assert sys.getswitchinterval() == 0.001
        assert sys.getswitchinterval() == 0.001  # the first still runs
        assert gc.get_threshold() == (100_000, 50, 100)
    assert sys.getswitchinterval() == original
    assert gc.get_threshold() == thresholds


def test_the_long_lived_objects_leave_the_collectors_sight() -> None:
    gc.unfreeze()
    try:
        freeze_long_lived()
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_only_the_rebuilds_thread_runs_at_a_lower_priority() -> None:
    before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    seen: dict[str, object] = {}

    def a_rebuild_thread() -> None:
        seen["lowered"] = lower_thread_priority(10)
        seen["nice"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    thread = threading.Thread(target=a_rebuild_thread)
    thread.start()
    thread.join()

    if sys.platform.startswith("linux"):
        assert seen == {"lowered": True, "nice": min(19, before + 10)}
    else:  # one nice value for the whole process: left alone
        assert seen == {"lowered": False, "nice": before}
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == before
    assert not lower_thread_priority(0)
