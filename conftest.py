"""Runs the Python examples of the documentation (``README.md`` and ``docs/``).

The convention every page follows: its fenced ``python`` blocks run top to bottom in
one namespace (one page, one namespace), in memory, with no PostgreSQL; a block may
``await`` at top level, and every page gets one event loop for all its blocks.
Blocks of other languages (``sh``, ``toml``, ``yaml``, ``text``) are not run.
An example that needs setup the reader need not see goes in an
``<!-- invisible-code-block: python -->`` comment.

Sybil rather than pytest-examples: Sybil runs a page's blocks as one document
sharing a namespace (an example builds on the one before, as a reader follows
them), and its evaluators are plain callables, so top-level ``await`` takes a few
lines; pytest-examples runs each block on its own.
"""

import ast
import asyncio
import inspect
from typing import Any

from sybil import Example, Sybil
from sybil.parsers.markdown import CodeBlockParser

_RUNNER = "__docs_event_loop__"


def _start_page(namespace: dict[str, Any]) -> None:
    namespace[_RUNNER] = asyncio.Runner()


def _end_page(namespace: dict[str, Any]) -> None:
    namespace.pop(_RUNNER).close()


def _run_block(example: Example) -> None:
    # Padded so that a failure's line number is the line in the page.
    source = "\n" * (example.line + example.parsed.line_offset) + example.parsed
    code = compile(
        source,
        example.path,
        "exec",
        flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT,
        dont_inherit=True,
    )
    # The documentation's own examples, compiled above.
    result = eval(code, example.namespace)
    if inspect.iscoroutine(result):
        example.namespace[_RUNNER].run(result)
    example.namespace.pop("__builtins__", None)


pytest_collect_file = Sybil(
    parsers=[CodeBlockParser(language="python", evaluator=_run_block)],
    patterns=["README.md", "docs/**/*.md"],
    setup=_start_page,
    teardown=_end_page,
).pytest()
