"""Fixtures shared by the component tests that run nodes as processes."""

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from eventcomposition.testing.processes import NodeProcesses


@pytest.fixture
def quiet_test_process_logs() -> Iterator[None]:
    """Publishing in the test's own process logs every event at INFO: keep it to
    warnings (``pytestmark = pytest.mark.usefixtures(...)`` in a module)."""
    config = structlog.get_config()
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING)
    )
    try:
        yield
    finally:
        structlog.configure(**config)


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[NodeProcesses]:
    """Node processes started by the test, ended (by their ids) when it ends; their
    logs are kept in the test's folder and the last lines printed, which pytest
    shows when the test fails."""
    log_dir = tmp_path / "node-logs"
    with NodeProcesses(log_dir=log_dir) as started:
        yield started
    print(f"every node's whole output: {log_dir}")
    for node in started:
        print(f"{node!r}\n{node.output_tail(15)}")
