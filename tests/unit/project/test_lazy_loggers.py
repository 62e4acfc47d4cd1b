"""``lazy_logger``: a module's structlog logger, with structlog imported on first use."""

import subprocess
import sys

from structlog.testing import capture_logs

from eventcomposition._lazy import lazy_logger


async def test_a_lazy_logger_logs_as_structlog_is_configured_when_it_logs() -> None:
    logger = lazy_logger("eventcomposition.test")

    with capture_logs() as captured:
        logger.info("synchronous", n=1)
        await logger.awarning("asynchronous", n=2)

    assert captured == [
        {"event": "synchronous", "n": 1, "log_level": "info"},
        {"event": "asynchronous", "n": 2, "log_level": "warning"},
    ]


def test_declaring_a_lazy_logger_does_not_import_structlog() -> None:
    probe = (
        "import sys\n"
        "from eventcomposition._lazy import lazy_logger\n"
        "logger = lazy_logger('eventcomposition.test')\n"
        "print('structlog' in sys.modules)\n"
    )
    imported = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()

    assert imported == "False"
