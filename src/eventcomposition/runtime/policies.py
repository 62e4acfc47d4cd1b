"""The error policies a consumer's settings name (light: the settings import
them)."""

from enum import StrEnum


class ErrorPolicy(StrEnum):
    """The error handlers a configuration can name."""

    CONTINUE = "continue"
    RETRY = "retry"
    RAISE = "raise"
    EXIT = "exit"
