"""``eventcomposition new``: the generated application installs, passes its own
tests and runs its node on PostgreSQL, from its own folder.

The application is installed with this checkout's wheel in a fresh virtual
environment (uv; its other dependencies come from uv's cache or the package
index), as a user outside this repository would have it.
"""

import os
import shutil
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest
from psycopg import AsyncConnection

from eventcomposition.cli import main
from eventcomposition.testing import DATABASE_URL_VARIABLE, PostgresServer
from eventcomposition.testing.postgres import ConnectionInfo
from eventcomposition.testing.processes import NodeProcess, node_environment
from eventcomposition.testing.waiting import wait_until

PROJECT_ROOT = Path(__file__).resolve().parents[2]
APP = "orders_app.container:AppContainer"


def uv() -> str:
    """The uv that runs this suite (``uv run`` names itself in ``$UV``)."""
    found = os.environ.get("UV") or shutil.which("uv")
    assert found, "these tests install the generated application with uv"
    return found


def call(
    argv: Sequence[str], *, cwd: Path, env: Mapping[str, str] | None = None
) -> str:
    completed = subprocess.run(
        list(argv),
        cwd=cwd,
        env=dict(env) if env is not None else None,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, (
        f"{' '.join(argv)} failed ({completed.returncode}):\n"
        f"{completed.stdout[-3000:]}\n{completed.stderr[-3000:]}"
    )
    return completed.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """A generated application and the virtual environment it is installed in."""
    work = tmp_path_factory.mktemp("new-project")
    app = work / "orders-app"
    assert main(["new", str(app)]) == 0
    call(
        [uv(), "build", "--wheel", "--quiet", "--out-dir", str(work / "dist")],
        cwd=PROJECT_ROOT,
    )
    [wheel] = (work / "dist").glob("*.whl")
    venv = work / "venv"
    call([uv(), "venv", "--quiet", str(venv)], cwd=work)
    call(
        [
            uv(),
            "pip",
            "install",
            "--quiet",
            "--python",
            str(venv / "bin" / "python"),
            f"{wheel}[testing]",
            str(app),
        ],
        cwd=work,
    )
    yield app, venv
    shutil.rmtree(work, ignore_errors=True)


def test_a_non_empty_folder_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "notes.txt").write_text("mine")

    status = main(["new", str(tmp_path)])

    assert status == 1
    assert "is not empty: give the path of a new or empty folder" in (
        capsys.readouterr().err
    )
    assert [path.name for path in tmp_path.iterdir()] == ["notes.txt"]


def test_the_generated_application_passes_its_tests(
    installed: tuple[Path, Path], postgres_server: PostgresServer
) -> None:
    app, venv = installed
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("EVENTCOMPOSITION_", "PG", "PYTEST"))
    }
    env[DATABASE_URL_VARIABLE] = postgres_server.connection_info.url

    output = call(
        [str(venv / "bin" / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=app,
        env=env,
    )

    assert "1 passed" in output


async def test_its_node_migrates_and_counts_orders_from_its_folder(
    installed: tuple[Path, Path], postgres_database: ConnectionInfo
) -> None:
    app, venv = installed
    # Its development settings (storage on PostgreSQL) with the test server's
    # address; no settings folder named: ./settings is the application's.
    env = node_environment(
        postgres_database,
        environment="development",
        base={**os.environ, "PATH": f"{venv / 'bin'}:{os.environ['PATH']}"},
    )
    script = str(venv / "bin" / "eventcomposition")
    migrated = call([script, "db", "migrate", "--app", APP], cwd=app, env=env)
    assert "applied application migrations: 001_order_totals.sql" in migrated

    node = NodeProcess(
        [script, "run", "--app", APP, "--node-id", "n1"], env=env, cwd=app
    )
    try:
        await node.await_log("node.running", timeout=60)
        call(
            [
                script,
                "publish",
                "--category",
                "orders",
                "--stream",
                "c-1",
                "--name",
                "order-placed",
                "--payload",
                '{"amount_cents": 1250}',
            ],
            cwd=app,
            env=env,
        )

        async def counted() -> bool:
            async with await AsyncConnection.connect(postgres_database.conninfo) as c:
                cursor = await c.execute(
                    "SELECT orders, amount_cents FROM order_totals"
                )
                return await cursor.fetchall() == [(1, 1250)]

        await wait_until(counted, timeout=30, description="the order's total")
        node.terminate()
        assert await node.await_exit(timeout=30) == 0
    finally:
        node.close()
