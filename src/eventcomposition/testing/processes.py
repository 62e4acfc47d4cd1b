"""Real ``eventcomposition run`` processes for component tests.

``NodeProcess`` starts one node (``python -m eventcomposition run ...``) with a
given environment, reads its stderr (JSON log lines when
``EVENTCOMPOSITION_LOGGING__FORMAT=json``) and stdout in background threads, and
offers waits on log events, signals and exit. ``NodeProcesses`` starts several and
kills whatever still runs when it closes, so a failing test leaves no node behind.
``node_environment`` builds the environment of a node on a PostgreSQL database
with fast timings.

    with NodeProcesses() as nodes:
        observer = nodes.run_node(
            app="eventcomposition.containers.demo:DemoContainer",
            role="observer",
            node_id="observer-1",
            env=node_environment(database),
        )
        observer.wait_for_log("node.running", timeout=30)
        observer.terminate()
        assert observer.wait(timeout=10) == 0

Not mirakuru (3.1.0) or pytest-xprocess (1.0.2), tried November 2026: mirakuru
replaces the child's ``preexec_fn`` with ``setsid`` (so no death signal), merges
the environment into ours and drops the output it read up to its start banner;
pytest-xprocess writes stdout and stderr into one file for processes that outlive
a test.
"""

import asyncio
import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

from ..settings.variables import (
    ENV_PREFIX,
    ENVIRONMENT_VARIABLE,
    SETTINGS_DIR_VARIABLE,
    environment_variable,
)
from .postgres import ConnectionInfo

FAST_TIMINGS: Mapping[str, str | int | float] = {
    "broker.subscriber_manager_heartbeat_interval": 0.2,
    "broker.subscriber_manager_purge_interval": 2,
    "broker.subscriber_manager_subscriber_max_age": 10,
    "broker.coordinator_subscriber_max_time_since_last_seen": 3,
    "broker.coordinator_distribution_interval": 0.3,
    "broker.coordinator_leadership_attempt_interval": 0.2,
    "broker.observer_synchronisation_interval": 0.3,
    "broker.retry_initial_delay": 0.2,
    "broker.retry_max_delay": 2,
    "consumers.poll_interval": 0.1,
    "consumers.stop_timeout": 5,
    "consumers.claim_lease": 3,
}
"""Settings (dotted keys) that make a cluster react within a second or so."""

type LogRecord = dict[str, Any]
"""One parsed JSON log line."""
type LogPredicate = Callable[[LogRecord], bool]


def setting_variable(key: str) -> str:
    """The environment variable of a dotted settings key.

    ``setting_variable("storage.postgres.port")`` is
    ``EVENTCOMPOSITION_STORAGE__POSTGRES__PORT``.
    """
    return environment_variable(key)


def node_environment(
    database: ConnectionInfo | None = None,
    *,
    settings: Mapping[str, str | int | float] | None = None,
    environment: str = "test",
    settings_dir: Path | str | None = None,
    log_level: str = "INFO",
    fast: bool = True,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment of one node process.

    Starts from ``base`` (default: this process's environment) without any
    ``EVENTCOMPOSITION_*`` or libpq ``PG*`` variable, so nothing of the caller's
    leaks into the node; then selects ``environment`` and ``settings_dir``, JSON
    logs at ``log_level`` and unbuffered output, PostgreSQL storage on
    ``database`` when given, ``FAST_TIMINGS`` when ``fast``, and finally
    ``settings`` (dotted keys, e.g. ``{"broker.retry_max_delay": 5}``).
    """
    source = os.environ if base is None else base
    env = {
        name: value
        for name, value in source.items()
        if not name.upper().startswith((ENV_PREFIX, "PG"))
    }
    env["PYTHONUNBUFFERED"] = "1"
    env[ENVIRONMENT_VARIABLE] = environment
    if settings_dir is not None:
        env[SETTINGS_DIR_VARIABLE] = str(settings_dir)
    values: dict[str, str | int | float] = {
        "logging.format": "json",
        "logging.level": log_level,
    }
    if database is not None:
        values.update(
            {
                "storage.type": "postgres",
                "storage.postgres.host": database.host,
                "storage.postgres.port": database.port,
                "storage.postgres.database": database.dbname,
                "storage.postgres.user": database.user,
            }
        )
        if database.password:
            values["storage.postgres.password"] = database.password
    if fast:
        values.update(FAST_TIMINGS)
    values.update(settings or {})
    env.update({setting_variable(key): str(value) for key, value in values.items()})
    return env


def run_command(
    *,
    app: str | None = None,
    role: str | None = None,
    node_id: str | None = None,
    migrate: bool = False,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """The argv of ``eventcomposition run`` with this interpreter."""
    argv = [sys.executable, "-m", "eventcomposition", "run"]
    if app is not None:
        argv += ["--app", app]
    if role is not None:
        argv += ["--role", role]
    if node_id is not None:
        argv += ["--node-id", node_id]
    if migrate:
        argv.append("--migrate")
    return [*argv, *extra_args]


@dataclass(frozen=True)
class CompletedNode:
    """A command that ran to its end: exit status and its output, line by line."""

    returncode: int
    stdout: list[str]
    stderr: list[str]
    duration_seconds: float


_PR_SET_PDEATHSIG = 1


def _find_prctl() -> Callable[..., int] | None:
    # Looked up here, in the parent: between fork and exec the child must not
    # load libraries (another thread of the parent may have held the loader's
    # lock when it forked).
    if sys.platform != "linux":
        return None
    try:
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return prctl


_prctl = _find_prctl()


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    # Linux: the child gets SIGKILL when the thread that started it ends, so a
    # test runner killed hard leaves no node behind.
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _kill_if_running(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)


class NodeProcess:
    """One child process whose output is collected line by line as it comes.

    Lines of stderr that are JSON objects are also kept parsed, in ``records``.
    Every method is safe to call from the thread that owns the object while the
    reader threads run.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        name: str | None = None,
        cwd: Path | str | None = None,
        output_closed: bool = False,
    ) -> None:
        """``output_closed``: stdout and stderr are a pipe nobody reads (closed
        at its far end, as after ``| head``), so every write fails with EPIPE."""
        self.argv = list(argv)
        self.name = name or " ".join(self.argv[-4:])
        self._condition = threading.Condition()
        self._stderr: list[str] = []
        self._stdout: list[str] = []
        self._records: list[LogRecord] = []
        self.started_at = time.monotonic()
        in_main_thread = threading.current_thread() is threading.main_thread()
        output: int = subprocess.PIPE
        if output_closed:
            read_end, output = os.pipe()
            os.close(read_end)
        self._process = subprocess.Popen(
            self.argv,
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=output,
            # Only from the main thread: the death signal follows the thread that
            # forked, and a worker thread may end long before the node should.
            preexec_fn=_die_with_parent
            if in_main_thread and _prctl is not None
            else None,
        )
        if output_closed:
            os.close(output)
        self._finalizer = weakref.finalize(self, _kill_if_running, self._process)
        self._readers = [
            self._reader(self._process.stderr, self._stderr, parse=True),
            self._reader(self._process.stdout, self._stdout, parse=False),
        ]

    @classmethod
    def run_node(
        cls,
        *,
        env: Mapping[str, str],
        app: str | None = None,
        role: str | None = None,
        node_id: str | None = None,
        migrate: bool = False,
        extra_args: Sequence[str] = (),
        cwd: Path | str | None = None,
        output_closed: bool = False,
    ) -> Self:
        """Start ``eventcomposition run`` with these options."""
        argv = run_command(
            app=app, role=role, node_id=node_id, migrate=migrate, extra_args=extra_args
        )
        return cls(
            argv,
            env=env,
            name=node_id or role or "node",
            cwd=cwd,
            output_closed=output_closed,
        )

    def __repr__(self) -> str:
        return (
            f"NodeProcess({self.name!r}, pid={self.pid}, returncode={self.returncode})"
        )

    def _reader(
        self, stream: IO[bytes] | None, lines: list[str], *, parse: bool
    ) -> threading.Thread:
        def read() -> None:
            if stream is None:
                return
            with stream:
                for raw in iter(stream.readline, b""):
                    line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
                    record = _parse(line) if parse else None
                    with self._condition:
                        lines.append(line)
                        if record is not None:
                            self._records.append(record)
                        self._condition.notify_all()
            with self._condition:
                self._condition.notify_all()

        thread = threading.Thread(
            target=read, name=f"node-output-{self.name}", daemon=True
        )
        thread.start()
        return thread

    # -- state ---------------------------------------------------------------

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def returncode(self) -> int | None:
        return self._process.poll()

    @property
    def running(self) -> bool:
        return self._process.poll() is None

    def cpu_seconds(self) -> float:
        """The CPU time (user and system) the running process has used (Linux)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rpartition(")")[2].split()
        # After the command name: state is field 3, utime 14 and stime 15.
        ticks = int(fields[11]) + int(fields[12])
        return ticks / os.sysconf("SC_CLK_TCK")

    @property
    def stderr_lines(self) -> list[str]:
        with self._condition:
            return list(self._stderr)

    @property
    def stdout_lines(self) -> list[str]:
        with self._condition:
            return list(self._stdout)

    @property
    def records(self) -> list[LogRecord]:
        with self._condition:
            return list(self._records)

    def mark(self) -> int:
        """How many JSON records there are now: pass it as ``after`` to look only
        at what comes later."""
        with self._condition:
            return len(self._records)

    def logs(
        self,
        event: str | None = None,
        predicate: LogPredicate | None = None,
        *,
        after: int = 0,
    ) -> list[LogRecord]:
        """The JSON log records from index ``after`` on, of ``event`` if given,
        matching ``predicate`` if given."""
        return [
            record
            for record in self.records[after:]
            if (event is None or record.get("event") == event)
            and (predicate is None or predicate(record))
        ]

    def non_json_stderr(self) -> list[str]:
        """The stderr lines that are not JSON log records (errors, tracebacks)."""
        return [line for line in self.stderr_lines if _parse(line) is None]

    def output_tail(self, lines: int = 30) -> str:
        """The end of stderr, for assertion messages."""
        tail = self.stderr_lines[-lines:]
        return f"--- last stderr lines of {self.name} ---\n" + "\n".join(tail)

    # -- waiting -------------------------------------------------------------

    def wait_for_log(
        self,
        event: str,
        timeout: float = 30.0,
        *,
        predicate: LogPredicate | None = None,
        after: int = 0,
    ) -> LogRecord:
        """The first record of ``event`` (matching ``predicate``) from index
        ``after`` on; waits for it up to ``timeout`` seconds.

        Blocking: from a coroutine use ``await_log``. Raises ``AssertionError``
        on timeout or when the process ends without logging it.
        """
        deadline = time.monotonic() + timeout
        with self._condition:
            while True:
                for record in self._records[after:]:
                    if record.get("event") == event and (
                        predicate is None or predicate(record)
                    ):
                        return record
                exited = self._process.poll() is not None
                readers_done = not any(t.is_alive() for t in self._readers)
                if exited and readers_done:
                    raise AssertionError(
                        f"{self.name} exited ({self._process.returncode}) without "
                        f"logging {event!r}\n{self._tail_locked()}"
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"{self.name} did not log {event!r} within {timeout:.1f}s\n"
                        f"{self._tail_locked()}"
                    )
                self._condition.wait(timeout=min(remaining, 0.1))

    async def await_log(
        self,
        event: str,
        timeout: float = 30.0,  # noqa: ASYNC109 - a deadline, as in wait_for_log
        *,
        predicate: LogPredicate | None = None,
        after: int = 0,
    ) -> LogRecord:
        """``wait_for_log`` without blocking the event loop."""
        return await asyncio.to_thread(
            self.wait_for_log, event, timeout, predicate=predicate, after=after
        )

    def _tail_locked(self, lines: int = 30) -> str:
        tail = self._stderr[-lines:]
        return f"--- last stderr lines of {self.name} ---\n" + "\n".join(tail)

    # -- signals and exit ----------------------------------------------------

    def terminate(self) -> None:
        """SIGTERM: the node should stop gracefully and exit 0."""
        self.send_signal(signal.SIGTERM)

    def interrupt(self) -> None:
        """SIGINT, as Ctrl-C sends."""
        self.send_signal(signal.SIGINT)

    def kill(self) -> None:
        """SIGKILL: the node dies at once, cleaning nothing up."""
        self.send_signal(signal.SIGKILL)

    def send_signal(self, signum: int) -> None:
        if self._process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self._process.send_signal(signum)

    def wait(self, timeout: float = 30.0) -> int:
        """The exit status, once the process has ended and its output is read.

        Raises ``AssertionError`` if it still runs after ``timeout`` seconds (the
        process is left running: ``close`` kills it).
        """
        try:
            returncode = self._process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{self.name} still runs {timeout:.1f}s later\n{self.output_tail()}"
            ) from None
        for reader in self._readers:
            reader.join(timeout=5)
        return returncode

    async def await_exit(self, timeout: float = 30.0) -> int:  # noqa: ASYNC109
        """``wait`` without blocking the event loop."""
        return await asyncio.to_thread(self.wait, timeout)

    def close(self) -> None:
        """Kill the process if it still runs and wait for it and its readers."""
        self._finalizer()
        for reader in self._readers:
            reader.join(timeout=5)

    def save_output(self, path: Path) -> Path:
        """Write the command, its exit status, stderr and stdout to ``path``."""
        text = "\n".join(
            [
                f"# {' '.join(self.argv)}",
                f"# pid {self.pid}, exit status {self.returncode}",
                *self.stderr_lines,
                *(["# stdout:", *self.stdout_lines] if self.stdout_lines else []),
            ]
        )
        path.write_text(text + "\n", encoding="utf-8")
        return path


class NodeProcesses:
    """Starts node processes and kills every one still running on ``close``.

    With a ``log_dir``, ``close`` also writes each node's output there, as
    ``<name>.log``.
    """

    def __init__(self, log_dir: Path | None = None) -> None:
        self._nodes: list[NodeProcess] = []
        self.log_dir = log_dir

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __iter__(self) -> Iterator[NodeProcess]:
        return iter(list(self._nodes))

    def add(self, node: NodeProcess) -> NodeProcess:
        self._nodes.append(node)
        return node

    def run_node(
        self,
        *,
        env: Mapping[str, str],
        app: str | None = None,
        role: str | None = None,
        node_id: str | None = None,
        migrate: bool = False,
        extra_args: Sequence[str] = (),
        cwd: Path | str | None = None,
        output_closed: bool = False,
    ) -> NodeProcess:
        """Start ``eventcomposition run`` with these options (see ``NodeProcess``)."""
        return self.add(
            NodeProcess.run_node(
                env=env,
                app=app,
                role=role,
                node_id=node_id,
                migrate=migrate,
                extra_args=extra_args,
                cwd=cwd,
                output_closed=output_closed,
            )
        )

    def close(self) -> None:
        for node in self._nodes:
            node.send_signal(signal.SIGKILL)
        for node in self._nodes:
            node.close()
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            taken: set[str] = set()
            for node in self._nodes:
                name = (
                    node.name if node.name not in taken else f"{node.name}-{node.pid}"
                )
                taken.add(name)
                node.save_output(self.log_dir / f"{name}.log")


def run_to_completion(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    timeout: float = 60.0,
    cwd: Path | str | None = None,
    input: str | None = None,
) -> CompletedNode:
    """Run a command that should end by itself; its status and output lines.

    ``input`` is its standard input (default: none, end of file at once).
    """
    started = time.monotonic()
    try:
        completed = subprocess.run(
            list(argv),
            env=dict(env),
            cwd=cwd,
            input=input.encode("utf-8") if input is not None else None,
            stdin=subprocess.DEVNULL if input is None else None,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as expired:
        raise AssertionError(
            f"{' '.join(argv)} did not end within {timeout:.1f}s; stderr:\n"
            + _text(expired.stderr)
        ) from None
    return CompletedNode(
        returncode=completed.returncode,
        stdout=_text(completed.stdout).splitlines(),
        stderr=_text(completed.stderr).splitlines(),
        duration_seconds=time.monotonic() - started,
    )


def _text(output: bytes | str | None) -> str:
    if output is None:
        return ""
    if isinstance(output, bytes):
        return output.decode("utf-8", errors="replace")
    return output


def _parse(line: str) -> LogRecord | None:
    if not line.startswith("{"):
        return None
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
