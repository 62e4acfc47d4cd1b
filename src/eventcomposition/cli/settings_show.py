"""``eventcomposition settings show``: the effective settings and where each came from."""

import argparse
from collections.abc import Sequence

from ..settings import settings_files, settings_with_sources
from .options import add_settings_arguments


def add_parser(
    subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]",
) -> None:
    parser = subparsers.add_parser("settings", help="inspect the effective settings")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    show = actions.add_parser(
        "show",
        help="print the settings files used, every setting, its value (secrets "
        "masked) and its source",
    )
    add_settings_arguments(show)
    show.set_defaults(func=show_settings)


def show_settings(args: argparse.Namespace) -> int:
    rows = [
        (row.key, row.value, row.source)
        for row in settings_with_sources(args.env, settings_dir=args.settings_dir)
    ]
    files = settings_files(args.env, settings_dir=args.settings_dir)
    print("settings files, lowest priority first:")
    for path in files:
        print(f"  {path}")
    print()
    print(format_table(("setting", "value", "source"), rows))
    return 0


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [
        max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)
    ]
    lines = [header, ["-" * width for width in widths], *rows]
    return "\n".join(
        "  ".join(
            cell.ljust(width) for cell, width in zip(line, widths, strict=True)
        ).rstrip()
        for line in lines
    )
