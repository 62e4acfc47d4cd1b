"""Waiting on conditions with a timeout in tests, instead of sleeping a fixed time."""

from ..waiting import Condition, wait_for


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
    if not await wait_for(condition, timeout=timeout, interval=interval):
        what = description or getattr(condition, "__name__", repr(condition))
        raise AssertionError(f"timed out after {timeout:.1f}s waiting for {what}")
