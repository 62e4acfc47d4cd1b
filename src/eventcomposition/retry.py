"""Exponential backoff between retries of work that failed."""

from dataclasses import dataclass
from datetime import timedelta


@dataclass(frozen=True)
class Backoff:
    """Delays that double after each consecutive failure, up to a maximum.

    ``delay(1)`` is ``initial``, ``delay(2)`` twice that, and so on, never more than
    ``maximum``. ``delay(0)`` is zero: nothing has failed yet.
    """

    initial: timedelta = timedelta(milliseconds=500)
    maximum: timedelta = timedelta(seconds=30)

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

    def delay(self, consecutive_failures: int) -> timedelta:
        if consecutive_failures <= 0:
            return timedelta(0)
        # Work in float seconds: a large exponent must not overflow timedelta.
        exponent = min(consecutive_failures - 1, 64)
        seconds = self.initial.total_seconds() * 2.0**exponent
        return min(timedelta(seconds=seconds), self.maximum)
