"""``eventcomposition dead-letters list|retry``, run in process through ``main``."""

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from dependency_injector import providers
from logicblocks.event.store import EventStore, PostgresEventStorageAdapter
from logicblocks.event.types import CategoryIdentifier, NewEvent, StoredEvent
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from eventcomposition.cli import main
from eventcomposition.consumers import (
    EventHandler,
    PostgresCheckpointStore,
    Transaction,
    make_transactional_consumer,
)
from eventcomposition.containers import EventRuntimeContainer
from eventcomposition.runtime import SubscriptionConsumerRegistration
from eventcomposition.testing.postgres import ConnectionInfo

SETTINGS_DIR = str(Path(__file__).resolve().parents[2] / "settings")
GROUP = "ledger"
CATEGORY = "payments"


class LedgerProcessor(EventHandler):
    """Writes one ledger row per event; refuses negative amounts while ``strict``."""

    strict = True

    async def process_event(self, event: StoredEvent, transaction: Transaction) -> None:
        assert isinstance(event.payload, dict)
        amount = event.payload["amount"]
        assert isinstance(amount, int)
        if amount < 0 and LedgerProcessor.strict:
            raise ValueError(f"negative amount {amount}")
        await transaction.connection.execute(
            "INSERT INTO ledger (event_id, amount) VALUES (%s, %s)",
            (event.id, amount),
        )


class LedgerApp(EventRuntimeContainer):
    consumers = providers.List(
        providers.Factory(
            SubscriptionConsumerRegistration,
            consumer=providers.Factory(
                EventRuntimeContainer.transactional_consumer,
                subscriber_group=GROUP,
                subscription_requests=[CategoryIdentifier(category=CATEGORY)],
                processor=providers.Factory(LedgerProcessor),
                poison_attempts=1,
            ),
        )
    )


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """``dead-letters retry`` configures logging onto pytest's captured stderr,
    which closes after the test: later tests must not log there."""
    structlog_config = structlog.get_config()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.configure(**structlog_config)
    root.handlers, root.level = handlers, level


@pytest.fixture
def database_environment(
    postgres_database: ConnectionInfo, monkeypatch: pytest.MonkeyPatch
) -> ConnectionInfo:
    values = {
        "HOST": postgres_database.host,
        "PORT": str(postgres_database.port),
        "DATABASE": postgres_database.dbname,
        "USER": postgres_database.user,
        "PASSWORD": postgres_database.password,
    }
    for key, value in values.items():
        monkeypatch.setenv(f"EVENTCOMPOSITION_STORAGE__POSTGRES__{key}", value)
    monkeypatch.setenv("EVENTCOMPOSITION_STORAGE__TYPE", "postgres")
    return postgres_database


async def park_one_payment(database: ConnectionInfo) -> None:
    async with AsyncConnectionPool[AsyncConnection[Any]](
        database.conninfo, min_size=1, max_size=4, open=False
    ) as pool:
        async with pool.connection() as connection:
            await connection.execute(
                "CREATE TABLE ledger (event_id text NOT NULL, amount bigint NOT NULL)"
            )
        store = EventStore(adapter=PostgresEventStorageAdapter(connection_source=pool))
        await store.stream(category=CATEGORY, stream="p").publish(
            events=[
                NewEvent(name="paid", payload={"amount": amount})
                for amount in (5, -3, 7)
            ]
        )
        await store.stream(category=CATEGORY, stream="q").publish(
            events=[NewEvent(name="paid", payload={"amount": 11})]
        )
        consumer = make_transactional_consumer(
            event_store=store,
            checkpoint_store=PostgresCheckpointStore(pool),
            subscriber_group=GROUP,
            subscription_requests=[CategoryIdentifier(category=CATEGORY)],
            processor=LedgerProcessor(),
            poison_attempts=1,
        )
        await consumer.accept(store.category(category=CATEGORY))
        await consumer.consume_all()


async def ledger(database: ConnectionInfo) -> list[int]:
    async with await AsyncConnection.connect(database.conninfo) as connection:
        cursor = await connection.execute("SELECT amount FROM ledger ORDER BY amount")
        return [row[0] for row in await cursor.fetchall()]


def test_lists_then_retries_a_parked_event(
    database_environment: ConnectionInfo,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asyncio.run(park_one_payment(database_environment))
    # 7 waits behind -3 in stream p; stream q goes on.
    assert asyncio.run(ledger(database_environment)) == [5, 11]
    capsys.readouterr()
    settings = ["--env", "test", "--settings-dir", SETTINGS_DIR]

    assert main(["dead-letters", "list", *settings]) == 0
    listed = capsys.readouterr().out.strip().splitlines()
    assert len(listed) == 2
    assert listed[0].startswith(f"{GROUP}  {CATEGORY}  sequence_number=")
    assert f"stream={CATEGORY}/p  failed" in listed[0]
    assert "attempts=1" in listed[0]
    assert listed[0].endswith("ValueError: negative amount -3")
    assert f"stream={CATEGORY}/p  waiting" in listed[1]

    app = f"{__name__}:LedgerApp"
    assert main(["dead-letters", "retry", "--app", app, *settings]) == 1
    assert "still parked 2" in capsys.readouterr().out

    monkeypatch.setattr(LedgerProcessor, "strict", False)
    assert main(["dead-letters", "retry", "--app", app, *settings]) == 0
    assert f"{GROUP}: applied 2, still parked 0" in capsys.readouterr().out
    assert asyncio.run(ledger(database_environment)) == [-3, 5, 7, 11]
    assert main(["dead-letters", "list", *settings]) == 0
    assert capsys.readouterr().out.startswith("no dead letters in ")


def test_retry_without_a_transactional_consumer_says_what_to_do(
    database_environment: ConnectionInfo, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(
        ["dead-letters", "retry", "--env", "test", "--settings-dir", SETTINGS_DIR]
    )

    assert status == 1
    assert "declares no transactional consumer" in capsys.readouterr().err


def test_listing_with_memory_storage_says_what_to_do(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("EVENTCOMPOSITION_STORAGE__TYPE", "memory")

    status = main(
        ["dead-letters", "list", "--env", "test", "--settings-dir", SETTINGS_DIR]
    )

    assert status == 1
    assert "dead-letters list needs PostgreSQL" in capsys.readouterr().err
