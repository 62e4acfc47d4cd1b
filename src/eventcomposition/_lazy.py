"""Packages whose public names are imported on first use (PEP 562).

A package lists its public names as ordinary imports under ``if TYPE_CHECKING:``
(so type checkers and readers see them) and sets
``__getattr__ = lazy_attributes(__name__, __file__)``: each name is imported from
its module when it is first used, so importing one light module of the package
(an enum, an error) does not import all of them, and the command line starts at
once.

``lazy_logger`` does the same for a module's structlog logger: structlog is
imported when the module first logs, since importing it imports rich's tracebacks,
a good part of a short command's start.
"""

import ast
import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def type_checking_imports(init_file: str) -> dict[str, str]:
    """The names ``init_file`` imports under ``if TYPE_CHECKING:``, and their modules
    (relative ones with their leading dots)."""
    tree = ast.parse(Path(init_file).read_text(encoding="utf-8"))
    homes: dict[str, str] = {}
    for node in tree.body:
        if not (isinstance(node, ast.If) and _is_type_checking(node.test)):
            continue
        for statement in node.body:
            if isinstance(statement, ast.ImportFrom):
                module = "." * statement.level + (statement.module or "")
                for alias in statement.names:
                    homes[alias.asname or alias.name] = module
    return homes


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def lazy_attributes(package: str, init_file: str) -> Callable[[str], object]:
    """A module ``__getattr__`` importing the package's declared names on first use."""
    homes: dict[str, str] = {}

    def __getattr__(name: str) -> object:
        if not homes:
            homes.update(type_checking_imports(init_file))
        home = homes.get(name)
        if home is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(home, package), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__


class _LazyLogger:
    """structlog's logger of one name, fetched on first use."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._logger: Any = None

    def __getattr__(self, attribute: str) -> Any:
        if self._logger is None:
            import structlog

            # structlog's own proxy: it follows later configure() calls.
            self._logger = structlog.get_logger(self._name)
        return getattr(self._logger, attribute)


def lazy_logger(name: str) -> Any:
    """What ``structlog.get_logger(name)`` returns, with structlog imported on the
    logger's first use rather than with the module that declares it."""
    return _LazyLogger(name)
