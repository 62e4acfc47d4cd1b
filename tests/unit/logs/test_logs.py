"""configure_logging: lines that cannot be written are dropped; quieter library lines."""

import io
import json
import logging
import os
from collections.abc import Iterator

import pytest
import structlog

from eventcomposition.logs import configure_logging


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    root.handlers, root.level = handlers, level


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_closed_pipe_drops_the_lines_without_raising(
    capfd: pytest.CaptureFixture[str],
) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)
    with os.fdopen(write_end, "w") as stream:
        configure_logging("INFO", "json", stream=stream)

        structlog.get_logger("test").info("broker.restarting")
        logging.getLogger("psycopg.pool").warning("connection lost")

    # Nothing reached stderr either: logging's handleError was not called.
    assert capfd.readouterr().err == ""


def test_a_full_disk_drops_the_lines_without_raising(
    capfd: pytest.CaptureFixture[str],
) -> None:
    # Every write to /dev/full fails with ENOSPC, as on a full disk.
    with open("/dev/full", "w") as stream:
        configure_logging("INFO", "console", stream=stream)

        structlog.get_logger("test").warning("consumer.retrying")
        logging.getLogger("psycopg.pool").warning("connection lost")

    assert capfd.readouterr().err == ""


def test_a_closed_stream_drops_the_lines_without_raising() -> None:
    stream = io.StringIO()
    configure_logging("INFO", "json", stream=stream)
    stream.close()

    structlog.get_logger("test").info("node.stopping")
    logging.getLogger("other").error("still no exception")


async def test_library_event_lines_show_only_at_debug() -> None:
    stream = io.StringIO()
    configure_logging("INFO", "json", stream=stream)
    logger = structlog.get_logger("logicblocks.event.store")

    await logger.ainfo("event.stream.published", events=[])
    await logger.ainfo("event.projection.saved")
    await logger.ainfo("event.consumer.subscription.accepting-source")

    assert [line["event"] for line in lines(stream)] == [
        "event.consumer.subscription.accepting-source"
    ]


async def test_at_debug_library_event_lines_are_debug_lines() -> None:
    stream = io.StringIO()
    configure_logging("DEBUG", "json", stream=stream)

    await structlog.get_logger("x").ainfo("event.stream.published")

    assert [(line["event"], line["level"]) for line in lines(stream)] == [
        ("event.stream.published", "debug")
    ]


async def test_library_events_can_be_asked_for() -> None:
    stream = io.StringIO()
    configure_logging("INFO", "json", library_events=True, stream=stream)

    await structlog.get_logger("x").ainfo("event.stream.published")

    assert [(line["event"], line["level"]) for line in lines(stream)] == [
        ("event.stream.published", "info")
    ]
