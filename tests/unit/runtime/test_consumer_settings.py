import dataclasses
from datetime import timedelta

import pytest
from logicblocks.event.processing import (
    ContinueErrorHandler,
    ContinueErrorHandlerDecision,
    IsolationMode,
    RetryErrorHandler,
)

from eventcomposition import Backoff, EventConsumerSettings


def test_defaults_continue_after_an_error() -> None:
    settings = EventConsumerSettings()

    assert isinstance(settings.error_handler, ContinueErrorHandler)
    decision = settings.error_handler.handle(RuntimeError("boom"))
    assert isinstance(decision, ContinueErrorHandlerDecision)


def test_default_continue_handler_lets_non_exceptions_through() -> None:
    # Cancellation must never be swallowed by the default policy.
    decision = EventConsumerSettings().error_handler.handle(KeyboardInterrupt())

    assert not isinstance(decision, ContinueErrorHandlerDecision)


def test_defaults_poll_every_second_on_the_main_thread() -> None:
    settings = EventConsumerSettings()

    assert settings.poll_interval == timedelta(seconds=1)
    assert settings.isolation_mode is IsolationMode.MAIN_THREAD


def test_defaults_wait_ten_seconds_for_a_graceful_stop() -> None:
    assert EventConsumerSettings().stop_timeout == timedelta(seconds=10)


def test_defaults_back_off_between_retries() -> None:
    backoff = EventConsumerSettings().retry_backoff

    assert isinstance(backoff, Backoff)
    assert backoff.delay(1) > timedelta(0)


def test_each_settings_gets_its_own_default_error_handler() -> None:
    assert EventConsumerSettings().error_handler is not (
        EventConsumerSettings().error_handler
    )


def test_given_values_are_kept() -> None:
    handler = RetryErrorHandler()
    backoff = Backoff(initial=timedelta(milliseconds=5))

    settings = EventConsumerSettings(
        error_handler=handler,
        poll_interval=timedelta(milliseconds=250),
        isolation_mode=IsolationMode.DEDICATED_THREAD,
        stop_timeout=timedelta(seconds=3),
        retry_backoff=backoff,
    )

    assert settings.error_handler is handler
    assert settings.poll_interval == timedelta(milliseconds=250)
    assert settings.isolation_mode is IsolationMode.DEDICATED_THREAD
    assert settings.stop_timeout == timedelta(seconds=3)
    assert settings.retry_backoff is backoff


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("poll_interval", timedelta(seconds=5)),
        ("isolation_mode", IsolationMode.SHARED_THREAD),
        ("error_handler", RetryErrorHandler()),
        ("stop_timeout", timedelta(seconds=1)),
    ],
)
def test_is_frozen(field: str, value: object) -> None:
    settings = EventConsumerSettings()

    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(settings, field, value)


def test_zero_poll_interval_is_allowed() -> None:
    assert EventConsumerSettings(poll_interval=timedelta(0)).poll_interval == (
        timedelta(0)
    )


def test_negative_poll_interval_is_rejected() -> None:
    with pytest.raises(ValueError, match="poll_interval"):
        EventConsumerSettings(poll_interval=timedelta(milliseconds=-1))


def test_negative_stop_timeout_is_rejected() -> None:
    with pytest.raises(ValueError, match="stop_timeout"):
        EventConsumerSettings(stop_timeout=timedelta(seconds=-1))
