"""Waiting on conditions with a timeout, instead of sleeping a fixed time."""

import asyncio
import time
from collections.abc import Awaitable, Callable

type Condition = Callable[[], bool | Awaitable[bool]]


async def wait_until(
    condition: Condition,
    *,
    timeout: float = 5.0,  # noqa: ASYNC109 - a deadline for the polling loop
    interval: float = 0.02,
    description: str | None = None,
) -> None:
    """Return as soon as ``condition()`` is true; fail after ``timeout`` seconds.

    The condition may be a plain or an async callable. On timeout an
    ``AssertionError`` names what was awaited, so a failing test says what did not
    happen.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() >= deadline:
            what = description or getattr(condition, "__name__", repr(condition))
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {what}")
        await asyncio.sleep(interval)
