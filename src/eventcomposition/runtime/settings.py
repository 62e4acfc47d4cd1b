from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from logicblocks.event.processing import (
    ContinueErrorHandler,
    ErrorHandler,
    ExitErrorHandler,
    IsolationMode,
    RaiseErrorHandler,
    RetryErrorHandler,
)

from ..retry import Backoff
from .policies import ErrorPolicy


def _nothing(_: BaseException) -> None:
    return None


def continue_after_error() -> ErrorHandler[Any]:
    """The default policy: log the failure and carry on with the next poll."""
    return ContinueErrorHandler(value_factory=_nothing)


def error_handler_for(policy: ErrorPolicy | str) -> ErrorHandler[Any]:
    """The logicblocks error handler for a named policy.

    - ``continue``: log, then poll again after the poll interval.
    - ``retry``: log, then retry at once after the settings' backoff.
    - ``raise``: log, then stop this consumer (the node keeps running).
    - ``exit``: log, then exit the process with status 1.
    """
    match ErrorPolicy(policy):
        case ErrorPolicy.CONTINUE:
            return continue_after_error()
        case ErrorPolicy.RETRY:
            return RetryErrorHandler()
        case ErrorPolicy.RAISE:
            return RaiseErrorHandler()
        case ErrorPolicy.EXIT:
            return ExitErrorHandler()


@dataclass(frozen=True)
class EventConsumerSettings:
    """How the runtime drives one consumer.

    - ``error_handler``: what to do when ``consume_all`` raises (continue by default;
      any logicblocks ``ErrorHandler`` works: retry, raise, exit, type mappings).
    - ``poll_interval``: the pause between two ``consume_all`` calls.
    - ``isolation_mode``: where the consumer runs. Consumers over a PostgreSQL pool
      must stay on ``MAIN_THREAD``: the pool belongs to the main event loop.
    - ``stop_timeout``: how long a graceful stop waits for the ``consume_all`` in
      progress to finish before cancelling it.
    - ``retry_backoff``: when the error handler decides to retry, the delays between
      attempts (logicblocks would retry at once).
    """

    error_handler: ErrorHandler[Any] = field(default_factory=continue_after_error)
    poll_interval: timedelta = timedelta(seconds=1)
    isolation_mode: IsolationMode = IsolationMode.MAIN_THREAD
    stop_timeout: timedelta = timedelta(seconds=10)
    retry_backoff: Backoff = field(
        default_factory=lambda: Backoff(
            initial=timedelta(milliseconds=100), maximum=timedelta(seconds=10)
        )
    )

    def __post_init__(self) -> None:
        if self.poll_interval < timedelta(0):
            raise ValueError(
                f"poll_interval must not be negative, got {self.poll_interval}"
            )
        if self.stop_timeout < timedelta(0):
            raise ValueError(
                f"stop_timeout must not be negative, got {self.stop_timeout}"
            )
