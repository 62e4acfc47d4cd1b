"""The command line imports only what the command it runs needs."""

import subprocess
import sys

import pytest

from eventcomposition.broker import BrokerRole
from eventcomposition.cli.parsers import DEFAULT_APP, ROLES, build_parser
from eventcomposition.containers import DEFAULT_APP as CONTAINERS_DEFAULT_APP

HEAVY = [
    "logicblocks.event.processing",
    "logicblocks.event.store",
    "dependency_injector",
    "aiohttp",
    "pydantic",
    "psycopg",
    "eventcomposition.broker",
    "eventcomposition.containers",
    "eventcomposition.settings",
]

PROBE = """
import contextlib, io, sys
from eventcomposition.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    try:
        main(["--help"])
    except SystemExit:
        pass
print("\\n".join(sorted(sys.modules)))
"""


def test_help_imports_none_of_the_heavy_modules() -> None:
    loaded = subprocess.run(
        [sys.executable, "-c", PROBE],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.split()

    assert "eventcomposition.cli" in loaded
    assert [module for module in HEAVY if module in loaded] == []


def test_loading_settings_imports_neither_logicblocks_processing_nor_psycopg() -> None:
    # What `settings show` needs, and every command before it does anything.
    probe = (
        "import sys\n"
        "from eventcomposition.settings import load_settings\n"
        "load_settings('test')\n"
        "print('\\n'.join(sorted(sys.modules)))\n"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.split()

    assert "eventcomposition.settings.models" in loaded
    heavy = [
        "logicblocks.event.processing",
        "logicblocks.event.store",
        "psycopg",
        "dependency_injector",
        "aiohttp",
    ]
    assert [module for module in heavy if module in loaded] == []


def test_the_parsers_copies_of_names_match_their_homes() -> None:
    assert [role.value for role in BrokerRole] == ROLES
    assert DEFAULT_APP == CONTAINERS_DEFAULT_APP


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--rol", "observer"],
        ["cluster", "status", "--js"],
        ["db", "migrate", "--ap", "x:y"],
    ],
)
def test_abbreviated_options_are_refused(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit:
        build_parser().parse_args(argv)

    assert exit.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err
