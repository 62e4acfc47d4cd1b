"""Exponential backoff, with jitter, between retries of work that failed."""

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from random import random as _uniform


@dataclass(frozen=True)
class Backoff:
    """Delays that double after each consecutive failure, up to a maximum.

    Before jitter, ``delay(1)`` is ``initial``, ``delay(2)`` twice that, and so on,
    never more than ``maximum``; ``delay(0)`` is zero: nothing has failed yet.

    ``jitter`` takes a random part off each delay, so nodes that failed together do
    not all retry at the same moment: the delay is drawn from ``[(1 - jitter) * d,
    d]``. ``0`` makes delays exact; below ``1``, a delay is never zero. ``random``
    draws from ``[0, 1)``; pass a fixed one to make delays predictable in tests.
    """

    initial: timedelta = timedelta(milliseconds=500)
    maximum: timedelta = timedelta(seconds=30)
    jitter: float = 0.5
    random: Callable[[], float] = field(default=_uniform, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.initial <= timedelta(0):
            raise ValueError(
                f"backoff initial delay must be positive, got {self.initial}"
            )
        if self.maximum < self.initial:
            raise ValueError(
                f"backoff maximum ({self.maximum}) must not be below its initial delay "
                f"({self.initial})"
            )
        if not 0 <= self.jitter < 1:
            raise ValueError(
                f"backoff jitter must be at least 0 and below 1, got {self.jitter}"
            )

    def delay(self, consecutive_failures: int) -> timedelta:
        if consecutive_failures <= 0:
            return timedelta(0)
        # Work in float seconds: a large exponent must not overflow timedelta.
        exponent = min(consecutive_failures - 1, 64)
        seconds = min(
            self.initial.total_seconds() * 2.0**exponent,
            self.maximum.total_seconds(),
        )
        return timedelta(seconds=seconds * (1 - self.jitter * self.random()))
