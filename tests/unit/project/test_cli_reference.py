"""The command-line reference names every command and option the parser has."""

import argparse
from collections.abc import Iterator
from pathlib import Path

from eventcomposition.cli import build_parser

REFERENCE = Path(__file__).resolve().parents[3] / "docs" / "reference" / "cli.md"


def commands_and_options(
    parser: argparse.ArgumentParser, command: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], str | None]]:
    """Each command path, with None, then with each of its long options."""
    yield command, None
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, subparser in action.choices.items():
                yield from commands_and_options(subparser, (*command, name))
        for option in action.option_strings:
            if option.startswith("--") and option != "--help":
                yield command, option


def test_every_command_and_option_is_in_the_reference() -> None:
    reference = REFERENCE.read_text(encoding="utf-8")
    missing = [
        " ".join(("eventcomposition", *command, option or "")).strip()
        for command, option in commands_and_options(build_parser())
        if ("eventcomposition " + " ".join(command)) not in reference
        or (option is not None and option not in reference)
    ]

    assert not missing, f"not in {REFERENCE.name}: {missing}"
