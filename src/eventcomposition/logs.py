"""Structured logging for nodes: JSON in production, readable console output otherwise.

Uses structlog's filtering bound logger, which has the async ``awarn`` that
logicblocks calls (structlog's stdlib ``BoundLogger`` lacks it and would crash those
paths).
"""

import logging
import sys
from typing import Literal, TextIO

import structlog

type LogFormat = Literal["console", "json"]


def configure_logging(
    level: str = "INFO",
    format: LogFormat = "console",
    *,
    stream: TextIO | None = None,
    **bound: str,
) -> None:
    """Configure structlog for this process, binding ``bound`` to every line.

    ``bound`` is typically ``node_id=...`` and ``role=...``: every log line of the
    process, logicblocks' included, carries them.
    """
    numeric_level = logging.getLevelNamesMapping()[level.upper()]
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if format == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    # What every line gets, from structlog or from the standard logging module.
    common: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
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
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stderr),
        cache_logger_on_first_use=False,
    )
    # Libraries that log through the standard logging module (psycopg_pool's
    # connection warnings, say) get the same format, level and bound values.
    handler = logging.StreamHandler(stream or sys.stderr)
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
