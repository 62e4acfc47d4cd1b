"""The read-only operator commands import only what they use (issue 22: operators
run ``cluster status`` in loops, and it must answer at once).

Each command runs in a fresh process against a real database whose tables show a
live node, its holdings, a leader and a rebuild, so every part of the report is
read and drawn; then the process lists the modules it imported.
"""

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from logicblocks.event.types import CategoryIdentifier

from eventcomposition.broker.leader import (
    COORDINATOR_LOCK_KEY,
    LOCK_HOLDER_APPLICATION_PREFIX,
)
from eventcomposition.consumers.partitions import CategoryPartition
from eventcomposition.testing.postgres import ConnectionInfo
from eventcomposition.testing.processes import node_environment, run_to_completion

PROJECT_ROOT = Path(__file__).resolve().parents[2]

# Runs the command in this process, then prints the modules it imported as the
# last line of stdout. With --watch, the first reading ends it (Ctrl-C, as an
# operator ends a watch).
PROBE = """
import json, signal, sys
from eventcomposition.cli import main

class FirstReadingEndsTheWatch:
    def __init__(self, out):
        self.out = out
    def write(self, text):
        self.out.write(text)
        if "cluster at" in text:
            signal.raise_signal(signal.SIGINT)
        return len(text)
    def __getattr__(self, name):
        return getattr(self.out, name)

argv = sys.argv[1:]
if "--watch" in argv:
    sys.stdout = FirstReadingEndsTheWatch(sys.stdout)
status = main(argv)
sys.stdout = sys.__stdout__
print()
print(json.dumps({"status": status, "modules": sorted(sys.modules)}))
"""

# What no read-only command needs: the broker and consumer machinery of
# logicblocks, the containers, the rebuild consumer, metrics, and structlog (whose
# import sets up rich's tracebacks).
NOT_FOR_READING = [
    "logicblocks.event.processing",
    "dependency_injector",
    "eventcomposition.containers",
    "eventcomposition.runtime.runtime",
    "eventcomposition.projections.consumer",
    "eventcomposition.metrics",
    "prometheus_client",
]
NOT_FOR_STATUS = [
    *NOT_FOR_READING,
    "logicblocks.event.store",
    "logicblocks.event.persistence",
    "structlog",
    "rich.traceback",
    "eventcomposition.broker.leadership",
    "eventcomposition.consumers.subscription",
    "eventcomposition.consumers.transactional",
]
NODE = "status-node"
PARTITION = CategoryPartition("orders", 0, 2)
PAYMENTS = CategoryIdentifier(category="payments")


@pytest.fixture
def cluster(postgres_database: ConnectionInfo) -> Iterator[ConnectionInfo]:
    """A database showing one live node holding two sources (one checkpointed by a
    transactional consumer, one by a per-event consumer's saved state), leading
    the coordinators, and a rebuild of a versioned projection."""
    with psycopg.connect(postgres_database.conninfo, autocommit=True) as writer:
        writer.execute(
            'INSERT INTO subscribers ("group", id, node_id, subscription_requests, '
            "last_seen) VALUES ('orders-view', 'sub-1', %s, %s, now())",
            [NODE, json.dumps([PARTITION.serialise(), PAYMENTS.serialise()])],
        )
        writer.execute(
            'INSERT INTO subscriptions ("group", id, node_id, event_sources) '
            "VALUES ('orders-view', 'sub-1', %s, %s)",
            [NODE, json.dumps([PARTITION.serialise(), PAYMENTS.serialise()])],
        )
        writer.execute(
            'INSERT INTO consumer_checkpoints ("group", source, sequence_number, '
            "updated_at) VALUES ('orders-view', %s, 0, now())",
            [PARTITION.key],
        )
        writer.execute(
            'INSERT INTO projection_versions ("group", version, state, schema_name, '
            "stable_schema, prepared, created_at) VALUES "
            "('totals', 1, 'live', 'totals_v1', 'totals', true, now()), "
            "('totals', 2, 'building', 'totals_v2', 'totals', true, now())"
        )
    with psycopg.connect(
        postgres_database.conninfo,
        autocommit=True,
        application_name=LOCK_HOLDER_APPLICATION_PREFIX + NODE,
    ) as leader:
        leader.execute("SELECT pg_advisory_lock(%s)", [COORDINATOR_LOCK_KEY])
        yield postgres_database


def run_probe(argv: list[str], env: dict[str, str]) -> tuple[str, dict[str, Any]]:
    """The command's output, and its status with the modules it imported."""
    completed = run_to_completion(
        [sys.executable, "-c", PROBE, *argv], env=env, cwd=PROJECT_ROOT
    )
    assert completed.returncode == 0, completed.stderr
    *output, last = completed.stdout
    return "\n".join(output), json.loads(last)


@pytest.mark.parametrize(
    "options",
    [[], ["--json"], ["--watch", "--interval", "0.2"]],
    ids=["text", "json", "watch"],
)
def test_cluster_status_reads_and_draws_without_the_node_machinery(
    cluster: ConnectionInfo, options: list[str]
) -> None:
    output, result = run_probe(
        ["cluster", "status", *options], node_environment(cluster)
    )

    assert result["status"] == 0
    # Every part of the report was read: the leader, both holdings, the rebuild.
    assert NODE in output
    assert PARTITION.key in output
    assert "payments" in output
    assert "totals" in output
    if "--json" in options:
        assert json.loads(output)["leader"] == NODE
    else:
        assert f"leading coordinator: {NODE}" in output
    loaded = set(result["modules"])
    assert "eventcomposition.cli.cluster" in loaded
    assert [module for module in NOT_FOR_STATUS if module in loaded] == []
    if "--json" in options:
        assert [module for module in loaded if module.startswith("rich")] == []


@pytest.mark.parametrize(
    "argv",
    [
        ["projections", "status", "totals"],
        ["dead-letters", "list"],
    ],
    ids=" ".join,
)
def test_other_read_only_commands_leave_the_node_machinery_alone(
    cluster: ConnectionInfo, argv: list[str]
) -> None:
    output, result = run_probe(argv, node_environment(cluster))

    assert result["status"] == 0
    assert output.strip()
    loaded = set(result["modules"])
    heavy = NOT_FOR_STATUS if argv[0] == "projections" else NOT_FOR_READING
    assert [module for module in heavy if module in loaded] == []


def test_settings_show_needs_neither_postgres_nor_logicblocks() -> None:
    output, result = run_probe(["settings", "show"], node_environment())

    assert result["status"] == 0
    assert "storage.type" in output
    loaded = set(result["modules"])
    heavy = [*NOT_FOR_STATUS, "psycopg", "logicblocks.event.types"]
    assert [module for module in heavy if module in loaded] == []
