"""A command on a pseudo-terminal, its screen kept by a VT100 emulator (pyte): what
a user at a terminal sees of ``cluster status --watch`` or ``projections status
--follow``."""

import fcntl
import os
import signal
import struct
import subprocess
import termios
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import pyte

EXIT_TIMEOUT = 10.0
SETTLE_SECONDS = 0.15


class Terminal:
    """``argv`` running on a pseudo-terminal of ``columns`` x ``lines``."""

    def __init__(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        *,
        columns: int,
        lines: int,
        cwd: Path | None = None,
    ) -> None:
        self._screen = pyte.Screen(columns, lines)
        self._stream = pyte.ByteStream(self._screen)
        self._lock = threading.Lock()
        self._master, slave = os.openpty()
        fcntl.ioctl(
            slave, termios.TIOCSWINSZ, struct.pack("HHHH", lines, columns, 0, 0)
        )
        environment = {
            name: value
            for name, value in env.items()
            if name not in {"COLUMNS", "LINES", "NO_COLOR", "TERM"}
        }
        self.process = subprocess.Popen(
            list(argv),
            env={**environment, "TERM": "xterm-256color"},
            stdin=slave,
            stdout=slave,
            stderr=subprocess.PIPE,
            cwd=cwd,
            start_new_session=True,
        )
        os.close(slave)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self._master, 65536)
            except OSError:  # EIO: the command closed the terminal
                return
            if not data:
                return
            with self._lock:
                self._stream.feed(data)

    def screen(self) -> str:
        """The screen now: possibly halfway through a redraw."""
        with self._lock:
            return "\n".join(line.rstrip() for line in self._screen.display)

    def settled_screen(self, timeout: float = 5.0) -> str:
        """The screen once it stays the same for a moment: a whole frame (a view
        that redraws once a second does so in well under ``SETTLE_SECONDS``)."""
        deadline = time.monotonic() + timeout
        previous = self.screen()
        while time.monotonic() < deadline:
            time.sleep(SETTLE_SECONDS)
            current = self.screen()
            if current == previous:
                return current
            previous = current
        raise AssertionError(f"the screen kept changing for {timeout}s:\n{previous}")

    def interrupt(self) -> None:
        """Ctrl-C, as the terminal sends it: SIGINT to the foreground process."""
        self.process.send_signal(signal.SIGINT)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=EXIT_TIMEOUT)
        if self.process.stderr is not None:
            self.process.stderr.close()
        self._reader.join(timeout=EXIT_TIMEOUT)
        os.close(self._master)


@contextmanager
def terminal(
    argv: Sequence[str],
    env: Mapping[str, str],
    *,
    columns: int,
    lines: int,
    cwd: Path | None = None,
) -> Iterator[Terminal]:
    """``argv`` on a terminal, killed (if still running) and closed afterwards."""
    running = Terminal(argv, env, columns=columns, lines=lines, cwd=cwd)
    try:
        yield running
    finally:
        running.close()
