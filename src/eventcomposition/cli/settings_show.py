"""``eventcomposition settings show``: the effective settings and where each came from."""

import argparse

from ..settings import settings_files, settings_with_sources
from .options import add_settings_arguments
from .tables import add_plain_row, new_table, render


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
    table = new_table("setting", "value", "source")
    for row in rows:
        add_plain_row(table, *row)
    print(render(table))
    return 0
