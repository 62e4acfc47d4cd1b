"""The typed settings of an eventcomposition node.

Every section is a frozen pydantic model that forbids unknown keys, so a typo in a
settings file or an environment variable is an error rather than silently ignored.
Build them with :func:`eventcomposition.settings.load_settings`, which layers the
TOML files under the environment variables and the explicit arguments.
"""

import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal, Self
from uuid import uuid4

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from eventcomposition.broker.role import BrokerRole
from eventcomposition.consumers.policies import PoisonOrder, PoisonPolicy
from eventcomposition.runtime.policies import ErrorPolicy

if TYPE_CHECKING:
    from logicblocks.event.persistence.postgres import ConnectionSettings

from eventcomposition.settings.variables import (
    ENV_NESTED_DELIMITER,
    ENV_PREFIX,
    PASSWORD_VARIABLE,
)

StorageType = Literal["memory", "postgres"]
WakeMode = Literal["notify", "poll"]
Allocation = Literal["balanced", "fill"]
BrokerType = Literal["distributed", "singleton"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
LogFormat = Literal["console", "json"]


def _seconds_from_text(value: object) -> object:
    # Environment variables are text: read "0.5" as seconds, as TOML's 0.5 is.
    # Anything else (an ISO 8601 duration such as "PT5S") goes to pydantic as is.
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _upper(value: object) -> object:
    return value.upper() if isinstance(value, str) else value


def _lower(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


class IsolationModeName(StrEnum):
    """logicblocks' ``IsolationMode`` members, named in lower case.

    Not logicblocks' enum itself: importing it imports logicblocks' broker, and
    the settings are loaded by commands that need nothing of it.
    ``containers.mapping`` turns it into the library's enum.
    """

    MAIN_THREAD = "main_thread"
    SHARED_THREAD = "shared_thread"
    DEDICATED_THREAD = "dedicated_thread"


IsolationModeSetting = Annotated[IsolationModeName, BeforeValidator(_lower)]


def _positive(value: timedelta) -> timedelta:
    if value <= timedelta(0):
        raise ValueError("must be a positive duration")
    return value


# A positive duration: seconds (0.5) or an ISO 8601 duration ("PT5S").
Interval = Annotated[
    timedelta, BeforeValidator(_seconds_from_text), AfterValidator(_positive)
]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def generate_node_id() -> str:
    """A node id unique enough for a cluster: ``<hostname>-<8 hex digits>``."""
    hostname = "".join(socket.gethostname().split()) or "node"
    return f"{hostname}-{uuid4().hex[:8]}"


class NodeSettings(_Section):
    id: str = Field(default_factory=generate_node_id)
    role: Annotated[BrokerRole, BeforeValidator(_lower)] = BrokerRole.FULL

    @field_validator("id")
    @classmethod
    def _id_is_one_word(cls, value: str) -> str:
        if not value or any(character.isspace() for character in value):
            raise ValueError("must be non-empty and contain no whitespace")
        return value


class PostgresSettings(_Section):
    host: str = Field(default="127.0.0.1", min_length=1)
    port: int = Field(default=5432, ge=1, le=65535)
    database: str = Field(default="eventcomposition", min_length=1)
    user: str = Field(default="eventcomposition", min_length=1)
    password: SecretStr | None = None
    pool_min_size: int = Field(default=1, ge=0)
    pool_max_size: int = Field(default=10, ge=1)
    connect_timeout: int = Field(default=5, ge=1, description="whole seconds")
    # How long a lost peer can hold anything up (see database.ConnectionTimeouts):
    # the server ends a session idle in a transaction this long (freeing its
    # locks), and both ends drop a connection whose data stays unacknowledged
    # this long. Both at most consumers.claim_lease.
    idle_in_transaction_timeout: Interval = timedelta(seconds=5)
    tcp_user_timeout: Interval = timedelta(seconds=5)
    keepalives_idle: Interval = timedelta(seconds=2)

    @model_validator(mode="after")
    def _pool_bounds_are_ordered(self) -> Self:
        if self.pool_min_size > self.pool_max_size:
            raise ValueError("pool_min_size must not be greater than pool_max_size")
        return self

    def connection_settings(self) -> "ConnectionSettings":
        """logicblocks' connection settings (an empty password when none is set)."""
        from logicblocks.event.persistence.postgres import ConnectionSettings

        return ConnectionSettings(
            host=self.host,
            port=self.port,
            dbname=self.database,
            user=self.user,
            password=self._revealed_password() or "",
        )

    def location(self) -> str:
        """Where the database is, for messages: host, port and database, no secret."""
        return f"{self.host}:{self.port}/{self.database}"

    def conninfo(self) -> str:
        """A psycopg/libpq connection string, including the password if set."""
        from psycopg.conninfo import make_conninfo  # psycopg is slow to import

        return make_conninfo(
            host=self.host,
            port=self.port,
            dbname=self.database,
            user=self.user,
            password=self._revealed_password(),
            connect_timeout=self.connect_timeout,
        )

    def _revealed_password(self) -> str | None:
        # The one place the secret leaves its SecretStr: the connection edge.
        return None if self.password is None else self.password.get_secret_value()


class StorageSettings(_Section):
    type: StorageType = "memory"
    postgres: PostgresSettings = Field(default_factory=PostgresSettings)


class BrokerSettings(_Section):
    """The broker's timings; names and defaults follow logicblocks 0.1.11."""

    type: BrokerType = "distributed"
    # DistributedEventBrokerSettings
    subscriber_manager_heartbeat_interval: Interval = timedelta(seconds=10)
    subscriber_manager_purge_interval: Interval = timedelta(minutes=1)
    subscriber_manager_subscriber_max_age: Interval = timedelta(minutes=10)
    coordinator_subscriber_max_time_since_last_seen: Interval = timedelta(seconds=60)
    coordinator_distribution_interval: Interval = timedelta(seconds=20)
    coordinator_leadership_max_duration: Interval = timedelta(minutes=15)
    coordinator_leadership_attempt_interval: Interval = timedelta(seconds=5)
    observer_synchronisation_interval: Interval = timedelta(seconds=20)
    # SingletonEventBrokerSettings
    distribution_interval: Interval = timedelta(seconds=60)
    # How the leading coordinator allocates sources: "balanced" (each observer of
    # a group holds its fair share; sources move in staged hand-overs) or "fill"
    # (logicblocks' behaviour: only sources nobody holds are allocated).
    allocation: Annotated[Allocation, BeforeValidator(_lower)] = "balanced"
    max_moves_per_distribution: int = Field(default=32, ge=1)
    # Backoff when the broker fails and is restarted.
    retry_initial_delay: Interval = timedelta(milliseconds=500)
    retry_max_delay: Interval = timedelta(seconds=30)

    @model_validator(mode="after")
    def _subscribers_outlive_their_heartbeats(self) -> Self:
        # A subscriber is seen once per heartbeat: a shorter limit would make the
        # coordinator drop (or the purge delete) subscribers that are alive.
        heartbeat = self.subscriber_manager_heartbeat_interval
        for name in (
            "coordinator_subscriber_max_time_since_last_seen",
            "subscriber_manager_subscriber_max_age",
        ):
            if getattr(self, name) <= heartbeat:
                raise ValueError(
                    f"{name} must be longer than subscriber_manager_heartbeat_interval"
                )
        if self.retry_initial_delay > self.retry_max_delay:
            raise ValueError("retry_initial_delay must not exceed retry_max_delay")
        return self


# As eventcomposition.consumers.partitions says (a test pins them equal); not
# imported from there, which would import logicblocks' event store.
DEFAULT_PARTITION_COUNT = 16
MAX_PARTITION_COUNT = 1024

type PartitionCount = Annotated[int, Field(ge=1, le=MAX_PARTITION_COUNT)]


class ConsumerSettings(_Section):
    """Defaults for every consumer the runtime starts."""

    poll_interval: Interval = timedelta(seconds=1)
    isolation_mode: IsolationModeSetting = IsolationModeName.MAIN_THREAD
    error_policy: Annotated[ErrorPolicy, BeforeValidator(_lower)] = ErrorPolicy.CONTINUE
    retry_initial_delay: Interval = timedelta(milliseconds=100)
    retry_max_delay: Interval = timedelta(seconds=10)
    stop_timeout: Interval = timedelta(seconds=10)
    # Transactional (batched) consumers.
    batch_size: int = Field(default=500, ge=1)
    # A source behind (its last batch came back full) reads up to this many events
    # per batch until it has caught up (batch_size if smaller).
    catch_up_batch_size: int = Field(default=2000, ge=1)
    claim_lease: Interval = timedelta(seconds=10)
    # A batch (read, process, commit) still running after this is abandoned,
    # rolled back and its source retried: how long a blocked source waits on itself.
    batch_timeout: Interval = timedelta(seconds=30)
    # Read a source's next batch (on a second connection) while its current one
    # is applied and committed, so that the database reads as Python applies.
    # Off: no gain measured yet on a loaded 2-core machine (see docs/guide/consumers.md).
    read_ahead: bool = False
    # How many batches of one consumer's sources run at once, each on its own
    # pooled connection (a batch running over a second stops counting, so hung
    # sources cannot hold the others back); each source progresses on its own.
    concurrent_batches: int = Field(default=2, ge=1)
    on_poison: Annotated[PoisonPolicy, BeforeValidator(_lower)] = PoisonPolicy.PARK
    poison_attempts: int = Field(default=3, ge=1)
    poison_order: Annotated[PoisonOrder, BeforeValidator(_lower)] = PoisonOrder.STREAM
    # Waking on PostgreSQL: "notify" (LISTEN/NOTIFY, polling every
    # notify_poll_interval as a safety net) or "poll" (every poll_interval).
    wake: Annotated[WakeMode, BeforeValidator(_lower)] = "notify"
    notify_poll_interval: Interval = timedelta(seconds=10)
    # Partitioned subscriptions: a group's partition count when it names none in
    # partition_counts (by subscriber group).
    partitions: PartitionCount = DEFAULT_PARTITION_COUNT
    partition_counts: dict[str, PartitionCount] = Field(default_factory=dict)

    def partition_count(self, group: str) -> int:
        """How many partitions ``group`` splits each category it partitions into."""
        return self.partition_counts.get(group, self.partitions)

    @model_validator(mode="after")
    def _retry_delays_are_ordered(self) -> Self:
        if self.retry_initial_delay > self.retry_max_delay:
            raise ValueError("retry_initial_delay must not exceed retry_max_delay")
        return self


class HttpSettings(_Section):
    """The node's HTTP server: probes, status and Prometheus metrics."""

    enabled: bool = False
    host: str = Field(default="127.0.0.1", min_length=1)
    port: int = Field(default=8080, ge=0, le=65535, description="0: any free port")


class HealthSettings(_Section):
    """When the node's readiness probe fails."""

    max_lag_events: int = Field(default=1000, ge=0)
    lag_trend_window: Interval = timedelta(seconds=60)


class LoggingSettings(_Section):
    level: Annotated[LogLevel, BeforeValidator(_upper)] = "INFO"
    format: Annotated[LogFormat, BeforeValidator(_lower)] = "console"
    # logicblocks' lines for every event written and projection saved: DEBUG unless
    # asked for.
    library_events: bool = False


# pydantic-settings chooses its sources per class, but the TOML files differ per
# load_settings call. The call sets this context variable around the one
# constructor call that reads it; a ContextVar keeps concurrent loads in other
# threads or asyncio tasks apart. Outside load_settings it is empty: no files.
_toml_files: ContextVar[tuple[Path, ...]] = ContextVar("_toml_files", default=())


@contextmanager
def reading_toml_files(files: Sequence[Path]) -> Iterator[None]:
    """Make EventCompositionSettings() read ``files`` (lowest priority first)."""
    token = _toml_files.set(tuple(files))
    try:
        yield
    finally:
        _toml_files.reset(token)


class EventCompositionSettings(BaseSettings):
    """All settings of a node. Prefer :func:`load_settings` to calling this.

    Called directly it reads only the environment variables and its arguments.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTED_DELIMITER,
        case_sensitive=False,
        env_ignore_empty=True,
        env_file=None,
        secrets_dir=None,
        extra="forbid",
        frozen=True,
    )

    environment: str = "development"
    node: NodeSettings = Field(default_factory=NodeSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    broker: BrokerSettings = Field(default_factory=BrokerSettings)
    consumers: ConsumerSettings = Field(default_factory=ConsumerSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    health: HealthSettings = Field(default_factory=HealthSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        files = _toml_files.get()
        if not files:
            return init_settings, env_settings
        toml_settings = TomlConfigSettingsSource(
            settings_cls, toml_file=list(files), deep_merge=True
        )
        return init_settings, env_settings, toml_settings

    @model_validator(mode="after")
    def _production_has_a_database_password(self) -> Self:
        password = self.storage.postgres.password
        if (
            self.environment == "production"
            and self.storage.type == "postgres"
            and (password is None or len(password) == 0)
        ):
            raise PydanticCustomError(
                "production_password_required",
                "storage.postgres.password is required in production; set {variable}",
                {"variable": PASSWORD_VARIABLE},
            )
        return self

    @model_validator(mode="after")
    def _roles_need_a_distributed_broker(self) -> Self:
        if self.broker.type == "singleton" and self.node.role is not BrokerRole.FULL:
            raise PydanticCustomError(
                "role_needs_distributed_broker",
                "node.role '{role}' needs broker.type 'distributed': a singleton "
                "broker neither coordinates nor shares work",
                {"role": str(self.node.role)},
            )
        return self

    @model_validator(mode="after")
    def _lost_peers_are_noticed_within_the_lease(self) -> Self:
        # A holder cut off inside a batch keeps its claim row locked until the
        # server ends its session: longer than the lease, and the takeover the
        # lease promises waits for it.
        if self.storage.type != "postgres":
            return self
        for name in ("idle_in_transaction_timeout", "tcp_user_timeout"):
            if getattr(self.storage.postgres, name) > self.consumers.claim_lease:
                raise PydanticCustomError(
                    "timeout_longer_than_lease",
                    "storage.postgres.{name} must not exceed consumers.claim_lease: "
                    "a holder cut off mid-batch would delay its takeover past the "
                    "lease; lower it or raise the lease",
                    {"name": name},
                )
        return self

    @model_validator(mode="after")
    def _postgres_consumers_run_on_the_main_thread(self) -> Self:
        # A psycopg pool belongs to the event loop that opened it (logicblocks
        # trap 4): consumers in other threads would hang on it.
        if (
            self.storage.type == "postgres"
            and self.consumers.isolation_mode is not IsolationModeName.MAIN_THREAD
        ):
            raise PydanticCustomError(
                "postgres_needs_main_thread",
                "consumers.isolation_mode must be 'main_thread' with PostgreSQL "
                "storage: the connection pool belongs to the main event loop",
            )
        return self
