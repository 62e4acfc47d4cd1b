"""What a node reports about its consumers, on PostgreSQL, for every consumer kind,
and what its probes say when the database goes away.

One node (the container's own wiring, HTTP on) runs a per-event subscription
consumer (``make_subscription_consumer`` with a logicblocks ``EventProcessor``,
declared as a user would, without metrics) and a transactional consumer. Its
``/metrics`` and ``/status`` must tell how many events each processed and how far
each held source is behind, from the position each kind really keeps.
"""

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from dependency_injector import providers
from logicblocks.event.processing import EventProcessor
from logicblocks.event.store import EventStore
from logicblocks.event.types import CategoryIdentifier, NewEvent, StoredEvent
from prometheus_client.parser import text_string_to_metric_families
from psycopg import AsyncConnection

from eventcomposition.broker import leading_coordinator
from eventcomposition.consumers import BatchProcessor, make_subscription_consumer
from eventcomposition.consumers.batch import Transaction
from eventcomposition.containers import EventRuntimeContainer, resolve
from eventcomposition.node import EventNode
from eventcomposition.runtime import SubscriptionConsumerRegistration
from eventcomposition.schema import migrate
from eventcomposition.services.http import NodeHttpServer
from eventcomposition.testing import ConnectionInfo, ThrowawayPostgres
from eventcomposition.testing.capture import CapturingProcessor
from eventcomposition.testing.containers import container_for_test, postgres_overrides
from eventcomposition.waiting import wait_for

pytestmark = pytest.mark.postgres

SETTINGS_DIR = Path(__file__).resolve().parents[2] / "settings"
N = 30
PER_EVENT = ("per-event", "category:orders")
BATCHED = ("batched", "category:payments")


class GatedProcessor(EventProcessor[StoredEvent]):
    """Processes an event only while its gate is open."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.seen = 0

    async def process_event(self, event: StoredEvent) -> None:
        await self.gate.wait()
        self.seen += 1


class GatedBatches(BatchProcessor):
    """Commits a batch only while its gate is open."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.seen = 0

    async def process_batch(
        self, events: Sequence[StoredEvent], transaction: Transaction
    ) -> None:
        await self.gate.wait()
        self.seen += len(events)


class TwoKindsApp(EventRuntimeContainer):
    per_event_processor = providers.Singleton(GatedProcessor)
    batch_processor = providers.Singleton(GatedBatches)
    consumers = providers.List(
        providers.Factory(
            SubscriptionConsumerRegistration,
            consumer=providers.Factory(
                make_subscription_consumer,
                event_store=EventRuntimeContainer.event_store,
                subscriber_group=PER_EVENT[0],
                subscription_requests=[CategoryIdentifier(category="orders")],
                event_processor=per_event_processor,
                state_persistence_interval=10,
            ),
        ),
        providers.Factory(
            SubscriptionConsumerRegistration,
            consumer=providers.Factory(
                EventRuntimeContainer.transactional_consumer,
                subscriber_group=BATCHED[0],
                subscription_requests=[CategoryIdentifier(category="payments")],
                processor=batch_processor,
            ),
        ),
    )


class Scraper:
    def __init__(self, session: aiohttp.ClientSession, server: NodeHttpServer):
        self._session = session
        self._url = server.url

    async def samples(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        async with self._session.get(self._url + "/metrics") as response:
            text = await response.text()
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    async def value(self, name: str, **labels: str) -> float | None:
        return (await self.samples()).get((name, tuple(sorted(labels.items()))))

    async def lag(self, group: str, source: str) -> float | None:
        return await self.value(
            "eventcomposition_consumer_lag_events", group=group, source=source
        )

    async def processed(self, group: str, source: str) -> float | None:
        return await self.value(
            "eventcomposition_events_processed_total", group=group, source=source
        )

    async def status(self) -> Any:
        async with self._session.get(self._url + "/status") as response:
            return json.loads(await response.text())


async def publish(store: EventStore, category: str, count: int) -> None:
    await store.stream(category=category, stream="s-1").publish(
        events=[NewEvent(name="happened", payload={"n": n}) for n in range(count)]
    )


async def eventually(check: Any, description: str, timeout: float = 20) -> None:  # noqa: ASYNC109
    assert await wait_for(check, timeout=timeout, interval=0.1), description


async def test_both_kinds_report_what_they_processed_and_how_far_behind(
    postgres_database: ConnectionInfo,
) -> None:
    async with container_for_test(
        TwoKindsApp,
        environment="test",
        settings_dir=SETTINGS_DIR,
        http={"enabled": True, "port": 0},
        **postgres_overrides(postgres_database),
    ) as container:
        node: EventNode = await resolve(container.node)
        server = await resolve(container.http_server)
        store = await resolve(container.event_store)
        per_event = await resolve(container.per_event_processor)
        batches = await resolve(container.batch_processor)
        async with node, aiohttp.ClientSession() as session:
            scrape = Scraper(session, server)

            async def both_held() -> bool:
                samples = await scrape.samples()
                return all(
                    samples.get(("eventcomposition_sources_held", (("group", group),)))
                    == 1
                    for group in (PER_EVENT[0], BATCHED[0])
                )

            await eventually(both_held, "both sources held")
            # Held, nothing published: caught up, nothing processed yet.
            assert await scrape.lag(*PER_EVENT) == 0
            assert await scrape.lag(*BATCHED) == 0

            await publish(store, "orders", N)
            await publish(store, "payments", N)

            async def both_behind() -> bool:
                lags = [await scrape.lag(*PER_EVENT), await scrape.lag(*BATCHED)]
                return all(lag is not None and lag > 0 for lag in lags)

            await eventually(both_behind, "both sources behind")
            status = await scrape.status()
            behind = {(s["group"], s["source"]): s["lag"] for s in status["sources"]}
            assert behind[PER_EVENT] > 0
            assert behind[BATCHED] > 0

            per_event.gate.set()
            batches.gate.set()

            async def caught_up() -> bool:
                return (
                    await scrape.lag(*PER_EVENT) == 0
                    and await scrape.lag(*BATCHED) == 0
                    and await scrape.processed(*PER_EVENT) == N
                    and await scrape.processed(*BATCHED) == N
                )

            await eventually(caught_up, "both caught up, N processed each")
            assert per_event.seen == N
            assert batches.seen == N
            status = await scrape.status()
            assert {(s["group"], s["source"]): s["lag"] for s in status["sources"]} == {
                PER_EVENT: 0,
                BATCHED: 0,
            }
            async with session.get(server.url + "/health/ready") as response:
                assert response.status == 200
            durations = await scrape.value(
                "eventcomposition_event_duration_seconds_count"
            )
            assert durations == N


# -- the database goes away ------------------------------------------------------

# Well under the pool's own 5 s timeout, which the probes used to wait for.
PROBE_CLIENT_TIMEOUT = aiohttp.ClientTimeout(total=2.5)
PROBES = ("/health/live", "/health/ready", "/status", "/metrics")


class OrdersApp(EventRuntimeContainer):
    processor = providers.Singleton(CapturingProcessor)
    consumers = providers.List(
        providers.Factory(
            SubscriptionConsumerRegistration,
            consumer=providers.Factory(
                make_subscription_consumer,
                event_store=EventRuntimeContainer.event_store,
                subscriber_group="orders",
                subscription_requests=[CategoryIdentifier(category="orders")],
                event_processor=processor,
            ),
        ),
    )


async def probe(session: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with session.get(url, timeout=PROBE_CLIENT_TIMEOUT) as response:
        return response.status, await response.text()


async def ready(session: aiohttp.ClientSession, server: NodeHttpServer) -> bool:
    status, _ = await probe(session, server.url + "/health/ready")
    return status == 200


async def test_every_probe_answers_and_every_role_is_unready_while_postgres_is_down(
    throwaway_postgres: ThrowawayPostgres,
) -> None:
    info = throwaway_postgres.connection_info
    await migrate(info.conninfo)
    # The throwaway server commits asynchronously (synchronous_commit = off): make
    # the schema durable, or the crash below may take it with it.
    async with await AsyncConnection.connect(info.conninfo, autocommit=True) as admin:
        await admin.execute("CHECKPOINT")
    overrides = {
        "environment": "test",
        "settings_dir": SETTINGS_DIR,
        "http": {"enabled": True, "port": 0},
        **postgres_overrides(info),
    }
    async with (
        container_for_test(
            OrdersApp, node={"id": "c-1", "role": "coordinator"}, **overrides
        ) as coordinator_container,
        container_for_test(
            OrdersApp, node={"id": "o-1", "role": "observer"}, **overrides
        ) as observer_container,
    ):
        coordinator = await resolve(coordinator_container.node)
        observer = await resolve(observer_container.node)
        servers = [
            await resolve(coordinator_container.http_server),
            await resolve(observer_container.http_server),
        ]
        async with coordinator, observer, aiohttp.ClientSession() as session:
            for server in servers:
                await eventually(lambda s=server: ready(session, s), "ready")

            await asyncio.to_thread(throwaway_postgres.shutdown, mode="immediate")
            for server in servers:
                answers = {
                    path: await probe(session, server.url + path) for path in PROBES
                }
                assert answers["/health/live"][0] == 200
                status, body = answers["/health/ready"]
                assert status == 503
                readiness = json.loads(body)
                assert "database" in readiness["failed"]
                reason = readiness["checks"]["database"]["reason"]
                assert "database" in reason
                assert json.loads(answers["/status"][1])["database_error"]
                metrics_text = answers["/metrics"][1]
                assert "eventcomposition_consumer_lag_events{" not in metrics_text
            # The observer still tells what it holds (it knows that without the
            # database); only the lag is unknown.
            assert 'eventcomposition_sources_held{group="orders"}' in metrics_text

            await asyncio.to_thread(throwaway_postgres.start)
            for server in servers:
                await eventually(
                    lambda s=server: ready(session, s), "ready again", timeout=30
                )


# -- no snapshot held open -----------------------------------------------------

OLD_SNAPSHOTS = """
    SELECT pid, application_name, state, now() - xact_start
    FROM pg_stat_activity
    WHERE datname = current_database() AND pid <> pg_backend_pid()
      AND xact_start < now() - make_interval(secs => %s)
      AND (backend_xmin IS NOT NULL OR state = 'idle in transaction')
"""


async def test_no_connection_of_an_idle_cluster_holds_a_snapshot(
    postgres_database: ConnectionInfo,
) -> None:
    overrides = {
        "environment": "test",
        "settings_dir": SETTINGS_DIR,
        **postgres_overrides(postgres_database),
    }
    async with (
        container_for_test(
            OrdersApp, node={"id": "lead-1", "role": "coordinator"}, **overrides
        ) as coordinator_container,
        container_for_test(
            OrdersApp, node={"id": "obs-1", "role": "observer"}, **overrides
        ) as observer_container,
        await AsyncConnection.connect(
            postgres_database.conninfo, autocommit=True
        ) as monitor,
    ):
        coordinator = await resolve(coordinator_container.node)
        observer = await resolve(observer_container.node)
        async with coordinator, observer:

            async def led_and_held() -> bool:
                leader = await leading_coordinator(monitor)
                return (
                    leader is not None
                    and leader.node_id == "lead-1"
                    and bool(observer.runtime.held_sources())
                )

            await eventually(led_and_held, "a leader, and the source held")
            # The leader's term (and everything else) goes on meanwhile: nothing
            # may keep a transaction, or its snapshot, for more than 2 s.
            for _ in range(8):
                await asyncio.sleep(0.5)
                cursor = await monitor.execute(OLD_SNAPSHOTS, [2])
                assert await cursor.fetchall() == []
