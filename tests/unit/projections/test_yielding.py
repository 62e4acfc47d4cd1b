"""A rebuild gives way to the live version's polls (``projections.yielding``)."""

import asyncio
import sys
import threading
import time

from eventcomposition.projections.yielding import (
    LiveWork,
    shorter_switch_interval,
)


async def test_waits_while_a_live_poll_runs_and_no_longer() -> None:
    live = LiveWork()
    started = time.monotonic()
    await live.finished(5.0)
    assert time.monotonic() - started < 0.05  # nothing runs: no wait

    ended_at: list[float] = []
    polling = threading.Event()

    def poll_on_another_thread() -> None:
        with live.poll():
            polling.set()
            time.sleep(0.2)
            ended_at.append(time.monotonic())

    thread = threading.Thread(target=poll_on_another_thread)
    thread.start()
    assert await asyncio.to_thread(polling.wait, 5.0)
    await live.finished(5.0)
    waited_until = time.monotonic()
    thread.join()
    assert not live.running
    assert ended_at, "returned before the poll ended"
    assert waited_until >= ended_at[0]
    assert waited_until - ended_at[0] < 2.0  # not the whole 5 s


async def test_waits_at_most_the_longest_time() -> None:
    live = LiveWork()
    with live.poll():
        started = time.monotonic()
        await live.finished(0.05)
        waited = time.monotonic() - started
    assert 0.05 <= waited < 1.0


def test_the_switch_interval_is_shorter_while_any_rebuild_runs() -> None:
    original = sys.getswitchinterval()
    with shorter_switch_interval(0.001):
        assert sys.getswitchinterval() == 0.001
        with shorter_switch_interval(0.001):
            assert sys.getswitchinterval() == 0.001
        assert sys.getswitchinterval() == 0.001  # the first still runs
    assert sys.getswitchinterval() == original
