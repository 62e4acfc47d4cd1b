"""Waiting on a condition with a deadline, instead of sleeping a fixed time."""

import asyncio
import time
from collections.abc import Awaitable, Callable

type Condition = Callable[[], bool | Awaitable[bool]]


async def wait_for(
    condition: Condition,
    *,
    timeout: float,  # noqa: ASYNC109 - a deadline for the polling loop
    interval: float = 0.02,
) -> bool:
    """Whether ``condition()`` became true within ``timeout`` seconds.

    The condition may be a plain or an async callable; it is checked at once, then
    every ``interval`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(interval)
