"""Options shared by the commands: settings selection and checked numbers."""

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..settings import EventCompositionSettings


def configure_logging_from(settings: "EventCompositionSettings", **bound: str) -> None:
    """Configure the process's logging as ``settings.logging`` says."""
    from ..logs import configure_logging

    configure_logging(
        settings.logging.level,
        settings.logging.format,
        library_events=settings.logging.library_events,
        stream=None,
        **bound,
    )


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--env",
        help="settings environment (default: $EVENTCOMPOSITION_ENV or development)",
    )
    parser.add_argument(
        "--settings-dir",
        help="folder of the settings files (default: $EVENTCOMPOSITION_SETTINGS_DIR "
        "or ./settings)",
    )


def positive_int(text: str) -> int:
    value = number(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = number(text, int)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {value}")
    return value


def positive_float(text: str) -> float:
    value = number(text, float)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value:g}")
    return value


def number[N: (int, float)](text: str, kind: type[N]) -> N:
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected {'an integer' if kind is int else 'a number'}, got {text!r}"
        ) from None
