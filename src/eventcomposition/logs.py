"""Structured logging for nodes: JSON in production, readable console output otherwise.

Uses structlog's filtering bound logger, which has the async ``awarn`` that
logicblocks calls (structlog's stdlib ``BoundLogger`` lacks it and would crash those
paths).

A script that uses the package configures logging once, at its start::

    from eventcomposition.logs import configure_logging

    configure_logging("INFO")  # or ("WARNING", "json"), ...

Until then structlog prints every level, DEBUG included.
"""

import logging
import os
import sys
import threading
from typing import Literal, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

type LogFormat = Literal["console", "json"]

# logicblocks' lines for each event it writes (consumer state included) and each
# projection it saves: most of a busy node's log at INFO.
LIBRARY_EVENTS = frozenset({"event.stream.published", "event.projection.saved"})


class DroppingWriter:
    """Writes whole log lines to a stream, dropping those that cannot be written.

    A closed pipe (EPIPE), a full disk or a closed file must not raise into the
    code that logs (the broker's restart loop, a consumer): the line is lost and
    the caller carries on. Writing straight to the file descriptor keeps nothing
    buffered in Python, so the interpreter has nothing left to flush (and fail on)
    when it exits.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()  # structlog and logging lock apart
        self._pending: list[str] = []
        try:
            self._fd: int | None = stream.fileno()
            stream.flush()
        except (OSError, ValueError):
            self._fd = None  # not a real file (a StringIO, pytest's capture)

    def write(self, text: str) -> int:
        with self._lock:
            self._pending.append(text)
        return len(text)

    def flush(self) -> None:
        with self._lock:
            data, self._pending = "".join(self._pending), []
        try:
            if self._fd is None:
                self._stream.write(data)
                self._stream.flush()
                return
            encoded = data.encode("utf-8", errors="replace")
            while encoded:
                encoded = encoded[os.write(self._fd, encoded) :]
        except (OSError, ValueError):
            pass


def demote_library_events(debug_enabled: bool) -> Processor:
    """A processor that shows ``LIBRARY_EVENTS`` only as DEBUG lines."""

    def demote(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
        if event_dict.get("event") in LIBRARY_EVENTS:
            if not debug_enabled:
                raise structlog.DropEvent
            event_dict["level"] = "debug"
        return event_dict

    return demote


def configure_logging(
    level: str = "INFO",
    format: LogFormat = "console",
    *,
    library_events: bool = False,
    stream: TextIO | None = None,
    **bound: str,
) -> None:
    """Configure structlog for this process, binding ``bound`` to every line.

    ``bound`` is typically ``node_id=...`` and ``role=...``: every log line of the
    process, logicblocks' included, carries them. ``library_events`` keeps
    logicblocks' per-event lines (``LIBRARY_EVENTS``) at their own level; by
    default they show only at DEBUG. Lines that cannot be written are dropped.
    """
    numeric_level = logging.getLevelNamesMapping()[level.upper()]
    writer = DroppingWriter(stream or sys.stderr)
    renderer: Processor = (
        structlog.processors.JSONRenderer()
        if format == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    # What every line gets, from structlog or from the standard logging module.
    common: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if not library_events:
        common.append(demote_library_events(numeric_level <= logging.DEBUG))
    structlog.configure(
        processors=[
            *common,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info
            if format == "json"
            else structlog.dev.set_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=structlog.WriteLoggerFactory(writer),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )
    # Libraries that log through the standard logging module (psycopg_pool's
    # connection warnings, say) get the same format, level and bound values.
    handler = logging.StreamHandler(writer)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*common, structlog.stdlib.add_logger_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(numeric_level)
    structlog.contextvars.clear_contextvars()
    if bound:
        structlog.contextvars.bind_contextvars(**bound)
