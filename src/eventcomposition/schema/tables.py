"""What the logicblocks 0.1.11 PostgreSQL adapters, and eventcomposition's
transactional consumers, need of each table they use.

Kept next to ``schema.sql`` (which creates exactly this) so that ``migrate`` can check
tables that existed before it ran.
"""

from dataclasses import dataclass

TEXT = ("text", "character varying")
JSONB = ("jsonb",)
TIMESTAMPTZ = ("timestamp with time zone",)
BIGINT = ("bigint",)
CONSUMERS = "eventcomposition"


@dataclass(frozen=True)
class ExpectedColumn:
    name: str
    accepted_types: tuple[str, ...]
    """Types the library works with; the first is the one ``schema.sql`` creates."""
    database_fills_it: bool = False
    """The library never writes the column, so it needs a default or an identity."""
    added_in_place: bool = False
    """``schema.sql`` adds it to tables made by earlier versions: it may be
    missing before the migration runs (never after)."""


@dataclass(frozen=True)
class ExpectedTable:
    name: str
    columns: tuple[ExpectedColumn, ...]
    unique_key: frozenset[str]
    """Columns the library relies on being unique together (ON CONFLICT targets,
    duplicate detection)."""
    indexes: tuple[str, ...]
    used_by: str = "logicblocks 0.1.11"
    """Who reads and writes the table, as error messages name it."""


OWNED_TABLES: tuple[ExpectedTable, ...] = (
    ExpectedTable(
        name="events",
        columns=(
            ExpectedColumn("id", TEXT),
            ExpectedColumn("name", TEXT),
            ExpectedColumn("stream", TEXT),
            ExpectedColumn("category", TEXT),
            ExpectedColumn("position", ("integer", "bigint")),
            ExpectedColumn("payload", JSONB),
            ExpectedColumn("sequence_number", ("bigint",), database_fills_it=True),
            ExpectedColumn("observed_at", TIMESTAMPTZ),
            ExpectedColumn("occurred_at", TIMESTAMPTZ),
        ),
        unique_key=frozenset({"id"}),
        indexes=(
            "events_sequence_number_key",
            "events_category_sequence_number_idx",
            "events_category_stream_sequence_number_idx",
            "events_category_stream_position_key",
            "events_category_bucket_sequence_number_idx",
        ),
    ),
    ExpectedTable(
        name="projections",
        columns=(
            ExpectedColumn("id", TEXT),
            ExpectedColumn("name", TEXT),
            ExpectedColumn("source", JSONB),
            ExpectedColumn("state", JSONB),
            ExpectedColumn("metadata", JSONB),
        ),
        unique_key=frozenset({"name", "id"}),
        indexes=("projections_name_source_idx",),
    ),
    ExpectedTable(
        name="subscribers",
        columns=(
            ExpectedColumn("group", TEXT),
            ExpectedColumn("id", TEXT),
            ExpectedColumn("node_id", TEXT),
            ExpectedColumn("subscription_requests", JSONB),
            ExpectedColumn("last_seen", TIMESTAMPTZ),
        ),
        unique_key=frozenset({"group", "id"}),
        indexes=("subscribers_last_seen_idx",),
    ),
    ExpectedTable(
        name="subscriptions",
        columns=(
            ExpectedColumn("group", TEXT),
            ExpectedColumn("id", TEXT),
            ExpectedColumn("node_id", TEXT),
            ExpectedColumn("event_sources", JSONB),
        ),
        unique_key=frozenset({"group", "id"}),
        indexes=("subscriptions_node_id_idx",),
    ),
    # The transactional consumers' own tables (eventcomposition.consumers).
    ExpectedTable(
        name="consumer_claims",
        columns=(
            ExpectedColumn("group", TEXT),
            ExpectedColumn("source", TEXT),
            ExpectedColumn("holder_node", TEXT),
            ExpectedColumn("holder_subscriber", TEXT),
            ExpectedColumn("epoch", BIGINT),
            ExpectedColumn("lease_expires_at", TIMESTAMPTZ),
            ExpectedColumn("released", ("boolean",)),
            ExpectedColumn("claimed_at", TIMESTAMPTZ),
        ),
        unique_key=frozenset({"group", "source"}),
        indexes=(),
        used_by=CONSUMERS,
    ),
    ExpectedTable(
        name="consumer_checkpoints",
        columns=(
            ExpectedColumn("group", TEXT),
            ExpectedColumn("source", TEXT),
            ExpectedColumn("sequence_number", BIGINT),
            ExpectedColumn("updated_at", TIMESTAMPTZ),
        ),
        unique_key=frozenset({"group", "source"}),
        indexes=(),
        used_by=CONSUMERS,
    ),
    ExpectedTable(
        name="consumer_dead_letters",
        columns=(
            ExpectedColumn("group", TEXT),
            ExpectedColumn("source", TEXT),
            ExpectedColumn("sequence_number", BIGINT),
            ExpectedColumn("event_id", TEXT),
            ExpectedColumn("error", TEXT),
            ExpectedColumn("attempts", ("integer", "bigint")),
            ExpectedColumn("parked_at", TIMESTAMPTZ),
            ExpectedColumn("stream", TEXT, added_in_place=True),
            ExpectedColumn("waiting", ("boolean",), added_in_place=True),
        ),
        unique_key=frozenset({"group", "source", "sequence_number"}),
        indexes=(),
        used_by=CONSUMERS,
    ),
    # Versions of projections (eventcomposition.projections).
    ExpectedTable(
        name="projection_versions",
        columns=(
            ExpectedColumn("group", TEXT),
            ExpectedColumn("version", ("integer", "bigint")),
            ExpectedColumn("state", TEXT),
            ExpectedColumn("schema_name", TEXT),
            ExpectedColumn("stable_schema", TEXT),
            ExpectedColumn("prepared", ("boolean",)),
            ExpectedColumn("created_at", TIMESTAMPTZ),
            ExpectedColumn("swapped_at", TIMESTAMPTZ),
            ExpectedColumn("retired_at", TIMESTAMPTZ),
            ExpectedColumn("error", TEXT),
        ),
        unique_key=frozenset({"group", "version"}),
        indexes=(
            "projection_versions_schema_name_key",
            "projection_versions_one_live_key",
            "projection_versions_one_building_key",
        ),
        used_by=CONSUMERS,
    ),
    ExpectedTable(
        name="consumer_partitionings",
        columns=(
            ExpectedColumn("group", TEXT),
            ExpectedColumn("category", TEXT),
            ExpectedColumn("count", ("integer", "bigint")),
            ExpectedColumn("changed_at", TIMESTAMPTZ),
        ),
        unique_key=frozenset({"group", "category"}),
        indexes=(),
        used_by=CONSUMERS,
    ),
    ExpectedTable(
        name="consumer_partition_floors",
        columns=(
            ExpectedColumn("group", TEXT),
            ExpectedColumn("source", TEXT),
            ExpectedColumn("former_index", ("integer", "bigint")),
            ExpectedColumn("former_count", ("integer", "bigint")),
            ExpectedColumn("sequence_number", BIGINT),
        ),
        unique_key=frozenset({"group", "source", "former_count", "former_index"}),
        indexes=(),
        used_by=CONSUMERS,
    ),
)

REQUIRED_EXTENSIONS: tuple[str, ...] = ("pg_trgm",)


# What a running node does with the tables it uses (projections are the
# application's business): checked when a node opens its database, so that a role
# without them fails at start with a message instead of failing every poll.
_READ_WRITE = ("SELECT", "INSERT", "UPDATE", "DELETE")
NODE_PRIVILEGES: dict[str, tuple[str, ...]] = {
    "events": ("SELECT", "INSERT"),
    "subscribers": _READ_WRITE,
    "subscriptions": _READ_WRITE,
    "consumer_claims": _READ_WRITE,
    "consumer_checkpoints": _READ_WRITE,
    "consumer_dead_letters": _READ_WRITE,
    "consumer_partitionings": _READ_WRITE,
    "consumer_partition_floors": _READ_WRITE,
}
