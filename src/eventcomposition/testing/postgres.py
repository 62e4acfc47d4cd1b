"""A throwaway PostgreSQL server for tests, or an existing one named by a URL.

``ThrowawayPostgres`` runs a private cluster in a temporary directory: ``initdb`` with
trust authentication (or, with ``auth="scram-sha-256"``, a superuser password required
on TCP connections), a server listening only on 127.0.0.1 on a free port with its
unix socket inside that directory, and durability switched off for speed. As root it
runs the server binaries as the unprivileged ``postgres`` OS user, because ``initdb``
and ``postgres`` refuse to run as root.

``postgres_server_from_environment`` returns an ``ExternalPostgres`` instead when
``EVENTCOMPOSITION_TEST_DATABASE_URL`` names a server (a libpq URL of an admin
database, e.g. ``postgresql://user:password@127.0.0.1:5432/postgres``).

Not pytest-postgresql (10.0.0, tried November 2026): as root its ``pg_ctl`` fails
("cannot be run as root") with no way to name another user, its password mode sets
one method for socket and TCP, and after a restart it returns once the port is open,
so the next connection can get "the database system is starting up".
"""

import os
import pwd
import re
import secrets
import shutil
import subprocess
import tempfile
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Literal, Self
from urllib.parse import quote
from uuid import uuid4

import port_for
import psycopg
from logicblocks.event.persistence.postgres import ConnectionSettings
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from ..errors import EventCompositionError
from ..settings.variables import ENV_PREFIX

DATABASE_URL_VARIABLE = ENV_PREFIX + "TEST_DATABASE_URL"
"""Names an existing server to use instead of starting a throwaway one."""
BINDIR_VARIABLE = ENV_PREFIX + "TEST_POSTGRES_BINDIR"
"""Names the directory holding initdb, pg_ctl and postgres, skipping the search."""

INSTALL_HINT = (
    "install the PostgreSQL server (Debian/Ubuntu, as root: "
    "apt-get update && apt-get install -y postgresql), "
    f"or set {DATABASE_URL_VARIABLE} to a server you have "
    "(e.g. postgresql://user:password@127.0.0.1:5432/postgres)"
)

type ShutdownMode = Literal["smart", "fast", "immediate"]
type AuthMethod = Literal["trust", "scram-sha-256"]
"""How a ThrowawayPostgres authenticates TCP clients (its unix socket always trusts)."""

_SERVER_BINARIES = ("initdb", "pg_ctl", "postgres")
_SUPERUSER = "postgres"
_ADMIN_DATABASE = "postgres"
_LOG_TAIL_LINES = 40


class PostgresServerError(EventCompositionError):
    """A test PostgreSQL server could not do what was asked of it."""


class PostgresUnavailableError(PostgresServerError):
    """No PostgreSQL server can be had: binaries missing, initdb or startup failed,
    or the server named by the environment cannot be reached."""


@dataclass(frozen=True)
class ConnectionInfo:
    """Where one database of a server is and how to log in to it."""

    host: str
    port: int
    user: str
    password: str = field(default="", repr=False)
    dbname: str = _ADMIN_DATABASE

    @property
    def conninfo(self) -> str:
        """A libpq keyword/value string, as psycopg's ``connect`` takes it."""
        return make_conninfo(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password or None,
            dbname=self.dbname,
        )

    @property
    def url(self) -> str:
        """A ``postgresql://`` URL with user and password quoted."""
        credentials = quote(self.user, safe="")
        if self.password:
            credentials += ":" + quote(self.password, safe="")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"postgresql://{credentials}@{host}:{self.port}/{quote(self.dbname)}"

    def connection_settings(self) -> ConnectionSettings:
        """The same place as logicblocks' ``ConnectionSettings``."""
        return ConnectionSettings(
            host=self.host,
            port=self.port,
            dbname=self.dbname,
            user=self.user,
            password=self.password,
        )

    def for_database(self, dbname: str) -> Self:
        return replace(self, dbname=dbname)

    @classmethod
    def from_url(cls, url: str) -> Self:
        """Parse a libpq URL or conninfo string; missing parts get libpq defaults."""
        try:
            parts = conninfo_to_dict(url)
        except psycopg.ProgrammingError as error:
            raise PostgresUnavailableError(
                f"{DATABASE_URL_VARIABLE} is not a valid libpq URL: {error}"
            ) from error
        return cls(
            host=str(parts.get("host") or "localhost"),
            port=int(parts.get("port") or 5432),
            user=str(parts.get("user") or _SUPERUSER),
            password=str(parts.get("password") or ""),
            dbname=str(parts.get("dbname") or _ADMIN_DATABASE),
        )


@dataclass(frozen=True)
class PostgresBinaries:
    bindir: Path

    @property
    def initdb(self) -> Path:
        return self.bindir / "initdb"

    @property
    def pg_ctl(self) -> Path:
        return self.bindir / "pg_ctl"

    @classmethod
    def complete_in(cls, directory: Path) -> bool:
        return all(
            (directory / name).is_file() and os.access(directory / name, os.X_OK)
            for name in _SERVER_BINARIES
        )


def find_postgres_binaries(
    environ: Mapping[str, str] = os.environ,
) -> PostgresBinaries:
    """Find initdb, pg_ctl and postgres.

    Looks in ``$EVENTCOMPOSITION_TEST_POSTGRES_BINDIR`` (only there, when set), else in
    ``pg_config --bindir``, the newest ``/usr/lib/postgresql/*/bin`` and ``PATH``.
    """
    override = environ.get(BINDIR_VARIABLE)
    if override:
        if PostgresBinaries.complete_in(Path(override)):
            return PostgresBinaries(Path(override))
        raise PostgresUnavailableError(
            f"{BINDIR_VARIABLE}={override} does not hold all of "
            f"{', '.join(_SERVER_BINARIES)}; point it at the server's bin directory "
            "(`pg_config --bindir` prints it) or unset it"
        )
    candidates = [
        *_pg_config_bindir(),
        *sorted(
            Path("/usr/lib/postgresql").glob("*/bin"),
            key=lambda path: _version_key(path.parent.name),
            reverse=True,
        ),
        *_bindir_on_path(),
    ]
    for candidate in candidates:
        if PostgresBinaries.complete_in(candidate):
            return PostgresBinaries(candidate)
    looked = ", ".join(str(path) for path in candidates) or "nowhere else"
    raise PostgresUnavailableError(
        f"PostgreSQL server binaries ({', '.join(_SERVER_BINARIES)}) not found "
        f"(looked in `pg_config --bindir`, /usr/lib/postgresql/*/bin and PATH: "
        f"{looked}); {INSTALL_HINT}"
    )


def _pg_config_bindir() -> list[Path]:
    pg_config = shutil.which("pg_config")
    if pg_config is None:
        return []
    try:
        completed = subprocess.run(
            [pg_config, "--bindir"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    return [Path(completed.stdout.strip())]


def _bindir_on_path() -> list[Path]:
    initdb = shutil.which("initdb")
    return [] if initdb is None else [Path(initdb).resolve().parent]


def _version_key(version: str) -> tuple[int, ...]:
    if re.fullmatch(r"\d+(\.\d+)*", version) is None:
        return (-1,)
    return tuple(int(part) for part in version.split("."))


@dataclass(frozen=True)
class _RunAs:
    """The unprivileged OS user that runs the server binaries when we are root."""

    name: str
    uid: int
    gid: int


def _run(
    argv: Sequence[str | Path],
    *,
    cwd: Path,
    run_as: _RunAs | None,
    timeout: float,
) -> subprocess.CompletedProcess[str]:
    # PG* variables (PGDATA, PGPORT, ...) of the caller must not steer the cluster.
    environment = {
        name: value for name, value in os.environ.items() if not name.startswith("PG")
    }
    if run_as is not None:
        environment.update(HOME=str(cwd), USER=run_as.name, LOGNAME=run_as.name)
    command = [str(arg) for arg in argv]
    try:
        return subprocess.run(
            command,
            cwd=cwd,
            env=environment,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            user=None if run_as is None else run_as.uid,
            group=None if run_as is None else run_as.gid,
            extra_groups=None if run_as is None else [],
        )
    except (OSError, subprocess.SubprocessError) as error:
        raise PostgresUnavailableError(
            f"could not run {' '.join(command)}: {error}"
        ) from error


def _stop_and_remove(
    pg_ctl: Path, data_dir: Path, base_dir: Path, run_as: _RunAs | None
) -> None:
    """Best-effort cleanup, also run at interpreter exit for a forgotten server."""
    if (data_dir / "postmaster.pid").exists():
        for mode in ("fast", "immediate"):
            try:
                completed = _run(
                    [pg_ctl, "-D", data_dir, "-m", mode, "-w", "-t", "60", "stop"],
                    cwd=base_dir,
                    run_as=run_as,
                    timeout=90,
                )
            except PostgresServerError:
                continue
            if completed.returncode == 0:
                break
    shutil.rmtree(base_dir, ignore_errors=True)


class ThrowawayPostgres:
    """A private PostgreSQL cluster in a temporary directory, removed by ``stop``.

    ``start`` creates and starts it; ``shutdown`` stops the server but keeps its data
    and port, so ``start`` brings the same server back; ``restart`` does both (fast
    shutdown: connected clients are disconnected). ``stop`` shuts down and deletes
    everything. Also a context manager (start on enter, stop on exit).

    ``auth="scram-sha-256"`` makes host (TCP) connections, the only ones clients
    make through ``connection_info``, authenticate with the superuser's
    ``password`` (a random one when none is given); ``connection_info`` carries it.
    The default, ``"trust"``, takes no password.
    """

    can_restart = True

    def __init__(
        self,
        *,
        binaries: PostgresBinaries | None = None,
        os_user: str = "postgres",
        timeout: float = 60.0,
        settings: Mapping[str, str | int] | None = None,
        auth: AuthMethod = "trust",
        password: str | None = None,
    ) -> None:
        if auth not in ("trust", "scram-sha-256"):
            raise ValueError(f"auth must be 'trust' or 'scram-sha-256', got {auth!r}")
        if auth == "trust" and password:
            raise ValueError(
                "a password needs password authentication: pass "
                "auth='scram-sha-256' as well"
            )
        if password is not None and ("\n" in password or "\r" in password):
            raise ValueError("the password must be one line")
        self._auth: AuthMethod = auth
        self._password = (
            "" if auth == "trust" else password or secrets.token_urlsafe(18)
        )
        self._binaries = binaries
        self._os_user = os_user
        self._timeout = timeout
        self._extra_settings = dict(settings or {})
        self._base_dir: Path | None = None
        self._run_as: _RunAs | None = None
        self._port: int | None = None
        self._running = False
        self._started_once = False
        self._cleanup: weakref.finalize[..., ThrowawayPostgres] | None = None

    def __repr__(self) -> str:
        state = "running" if self._running else "stopped"
        return f"ThrowawayPostgres(port={self._port}, {state}, dir={self._base_dir})"

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def auth(self) -> AuthMethod:
        return self._auth

    @property
    def password(self) -> str:
        """The superuser's password; empty with trust authentication."""
        return self._password

    @property
    def connection_info(self) -> ConnectionInfo:
        """The ``postgres`` database as superuser ``postgres``, with its password
        when the server requires one."""
        return ConnectionInfo(
            host="127.0.0.1", port=self.port, user=_SUPERUSER, password=self._password
        )

    @property
    def port(self) -> int:
        if self._port is None:
            raise PostgresServerError("the throwaway server has not been started")
        return self._port

    @property
    def data_dir(self) -> Path:
        return self._base() / "data"

    @property
    def log_file(self) -> Path:
        return self._base() / "server.log"

    @property
    def is_running(self) -> bool:
        return self._running

    def start(self) -> Self:
        """Create the cluster on first use, then start the server (waits for it)."""
        if self._running:
            return self
        if self._base_dir is None:
            self._initialise()
        try:
            self._start_server()
        except PostgresUnavailableError:
            if not self._started_once:
                self.stop()
            raise
        return self

    def shutdown(self, *, mode: ShutdownMode = "fast") -> None:
        """Stop the server and keep the cluster; ``start`` brings it back."""
        if not self._running:
            return
        completed = self._pg_ctl(
            "-m", mode, "-w", "-t", str(int(self._timeout)), "stop"
        )
        self._running = False
        if completed.returncode != 0:
            raise PostgresServerError(
                f"pg_ctl stop -m {mode} failed (exit {completed.returncode}): "
                f"{completed.stderr.strip()}\n{self.log_tail()}"
            )

    def restart(self) -> None:
        """Fast shutdown, then start again on the same port with the same data."""
        self.shutdown(mode="fast")
        self.start()

    def stop(self) -> None:
        """Stop the server and delete the cluster. Safe to call more than once;
        a later ``start`` creates a new cluster on a new port."""
        if self._cleanup is not None:
            self._cleanup()
        self._running = self._started_once = False
        self._base_dir = self._port = self._cleanup = None

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The end of the server log, for error messages."""
        try:
            text = self.log_file.read_text(encoding="utf-8", errors="replace")
        except (OSError, PostgresServerError):
            return "(no server log)"
        tail = "\n".join(text.splitlines()[-lines:])
        return f"server log ({self.log_file}), last lines:\n{tail}"

    def _base(self) -> Path:
        if self._base_dir is None:
            raise PostgresServerError("the throwaway server has not been started")
        return self._base_dir

    def _initialise(self) -> None:
        binaries = self._binaries or find_postgres_binaries()
        run_as = self._unprivileged_user()
        base_dir = Path(tempfile.mkdtemp(prefix="eventcomposition-postgres-"))
        (base_dir / "sockets").mkdir()
        if run_as is not None:
            for path in (base_dir, base_dir / "sockets"):
                os.chown(path, run_as.uid, run_as.gid)
        self._binaries, self._run_as, self._base_dir = binaries, run_as, base_dir
        self._cleanup = weakref.finalize(
            self,
            _stop_and_remove,
            binaries.pg_ctl,
            base_dir / "data",
            base_dir,
            run_as,
        )
        authentication = ["--auth=trust"]
        password_file = base_dir / "superuser-password"
        if self._auth != "trust":
            # The unix socket (pg_ctl, local admin) keeps trust; TCP needs the
            # password, which initdb reads from a file only the server user can read.
            password_file.touch(mode=0o600)
            if run_as is not None:
                os.chown(password_file, run_as.uid, run_as.gid)
            password_file.write_text(self._password + "\n", encoding="utf-8")
            authentication = [
                "--auth-local=trust",
                f"--auth-host={self._auth}",
                f"--pwfile={password_file}",
            ]
        try:
            completed = _run(
                [
                    binaries.initdb,
                    "-D",
                    self.data_dir,
                    *authentication,
                    f"--username={_SUPERUSER}",
                    "--encoding=UTF8",
                    "--locale=C",
                    "--no-sync",
                ],
                cwd=base_dir,
                run_as=run_as,
                timeout=self._timeout,
            )
        except PostgresUnavailableError:
            self.stop()
            raise
        finally:
            password_file.unlink(missing_ok=True)
        if completed.returncode != 0:
            self.stop()
            raise PostgresUnavailableError(
                f"initdb ({binaries.initdb}) failed with exit code "
                f"{completed.returncode}:\n{_tail(completed.stderr)}\n"
                f"Check that the PostgreSQL server is installed completely; "
                f"{INSTALL_HINT}"
            )
        # port-for picks outside the kernel's ephemeral range: a port the OS hands
        # out for bind(0) or to a client socket could be taken while the server is
        # down for a restart, and a restart must come back on the same port.
        self._port = port_for.select_random()
        self._write_settings()

    def _unprivileged_user(self) -> _RunAs | None:
        if os.geteuid() != 0:
            return None
        try:
            entry = pwd.getpwnam(self._os_user)
        except KeyError:
            raise PostgresUnavailableError(
                f"running as root, and initdb/postgres refuse to run as root, but "
                f"there is no OS user '{self._os_user}' to run them as; create it "
                f"(useradd --system --no-create-home {self._os_user}; installing the "
                "postgresql package does that), run the tests as an unprivileged "
                f"user, or set {DATABASE_URL_VARIABLE} to a server you have"
            ) from None
        return _RunAs(name=self._os_user, uid=entry.pw_uid, gid=entry.pw_gid)

    def _write_settings(self) -> None:
        settings: dict[str, str | int] = {
            "listen_addresses": "127.0.0.1",
            "password_encryption": "scram-sha-256",
            "port": self.port,
            "unix_socket_directories": str(self._base() / "sockets"),
            "max_connections": 200,
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            **self._extra_settings,
        }
        lines = [
            f"{name} = {_setting_value(value)}" for name, value in settings.items()
        ]
        with (self.data_dir / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write("\n# eventcomposition throwaway test server\n")
            conf.write("\n".join(lines) + "\n")

    def _start_server(self) -> None:
        for attempt in range(3):
            completed = self._pg_ctl(
                "-l", self.log_file, "-w", "-t", str(int(self._timeout)), "start"
            )
            if completed.returncode == 0:
                self._running = self._started_once = True
                return
            # The port was free when picked; on a first start another process may
            # have taken it since. A restart must keep its port, so it never moves.
            lost_port_race = (
                not self._started_once
                and attempt < 2
                and "Address already in use" in self.log_tail()
            )
            if not lost_port_race:
                break
            self._port = port_for.select_random()
            self._write_settings()
        raise PostgresUnavailableError(
            f"the PostgreSQL server did not start (pg_ctl exit "
            f"{completed.returncode}): {completed.stderr.strip()}\n{self.log_tail()}"
        )

    def _pg_ctl(self, *args: str | Path) -> subprocess.CompletedProcess[str]:
        binaries = self._binaries
        if binaries is None:
            raise PostgresServerError("the throwaway server has not been started")
        return _run(
            [binaries.pg_ctl, "-D", self.data_dir, *args],
            cwd=self._base(),
            run_as=self._run_as,
            timeout=self._timeout + 30,
        )


def _setting_value(value: str | int) -> str:
    if isinstance(value, int):
        return str(value)
    return "'" + value.replace("'", "''") + "'"


def _tail(text: str, lines: int = _LOG_TAIL_LINES) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


class ExternalPostgres:
    """A server someone else runs; eventcomposition only creates databases on it."""

    can_restart = False

    def __init__(self, connection_info: ConnectionInfo) -> None:
        self._connection_info = connection_info

    def __repr__(self) -> str:
        return f"ExternalPostgres({self._connection_info!r})"

    @property
    def connection_info(self) -> ConnectionInfo:
        return self._connection_info

    def start(self) -> Self:
        """Check that the server answers; raise ``PostgresUnavailableError`` if not."""
        try:
            with psycopg.connect(self._connection_info.conninfo, connect_timeout=10):
                pass
        except psycopg.Error as error:
            raise PostgresUnavailableError(
                f"cannot connect to the server named by {DATABASE_URL_VARIABLE} "
                f"({self._connection_info!r}): {error}; start it, fix the URL, "
                "or unset the variable to use a throwaway server"
            ) from error
        return self

    def restart(self) -> None:
        raise PostgresServerError(
            f"cannot restart the external server named by {DATABASE_URL_VARIABLE}; "
            "tests that restart PostgreSQL need a ThrowawayPostgres"
        )

    def stop(self) -> None:
        """Nothing to do: the server belongs to someone else."""


type PostgresServer = ExternalPostgres | ThrowawayPostgres
"""A server tests create databases on; only a ThrowawayPostgres can restart."""


def postgres_server_from_environment(
    environ: Mapping[str, str] = os.environ,
) -> PostgresServer:
    """The server named by ``$EVENTCOMPOSITION_TEST_DATABASE_URL``, else a started
    ``ThrowawayPostgres``. Raises ``PostgresUnavailableError`` when neither works."""
    url = environ.get(DATABASE_URL_VARIABLE, "").strip()
    if url:
        return ExternalPostgres(ConnectionInfo.from_url(url)).start()
    return ThrowawayPostgres().start()


def unique_database_name(prefix: str = "eventcomposition") -> str:
    return f"{prefix}_{uuid4().hex[:16]}"


def create_database(
    admin: ConnectionInfo, name: str, *, template: str | None = None
) -> ConnectionInfo:
    """``CREATE DATABASE name [TEMPLATE template]``; returns where it is."""
    statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if template is not None:
        statement += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
    with psycopg.connect(admin.conninfo, autocommit=True) as connection:
        connection.execute(statement)
    return admin.for_database(name)


def drop_database(admin: ConnectionInfo, name: str) -> None:
    """``DROP DATABASE IF EXISTS name WITH (FORCE)``: disconnects its clients."""
    with psycopg.connect(admin.conninfo, autocommit=True) as connection:
        connection.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)
            )
        )
