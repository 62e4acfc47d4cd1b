"""``eventcomposition settings show``: the effective settings and where each came from."""

import argparse

from ..settings import settings_files, settings_with_sources
from .tables import add_plain_row, new_table, render


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
