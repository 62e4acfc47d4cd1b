"""The application a fault-injection run's nodes run (``--app``).

One transactional consumer (group ``chaos``) over ``CATEGORY_COUNT`` categories.
Its processor records, in the batch's own transaction, one row per event: the
event, its stream and position, the node, the claim epoch it holds the source
under, the transaction id and the time (the server's clock). It then waits a
moment in the transaction, so that faults often land in the middle of a batch.

Its checkpoint store waits ``COMMIT_DELAY_SECONDS`` after the checkpoint statement
before the transaction commits, the client idle in its transaction with the claim
row locked: the moment when a holder cut off or frozen stalled takeovers (issue
21), made wide enough for faults to land in it often.

Its migration also adds two statement-level recorders on this package's tables:
every committed checkpoint move (``chaos_checkpoints``) and every allocation
write of a coordinator, with its address and whether its node held the
leadership lock as it wrote (``chaos_allocations``).

    eventcomposition run --app eventcomposition.testing.chaos.app:ChaosApp
"""

import asyncio
from collections.abc import Sequence
from datetime import timedelta

from dependency_injector import providers
from logicblocks.event.types import CategoryIdentifier, StoredEvent

from ...broker.leadership import COORDINATOR_LOCK_KEY
from ...consumers import BatchProcessor, PostgresCheckpointStore, Transaction
from ...consumers.claims import Claim
from ...consumers.stores import Unchecked
from ...containers import EventRuntimeContainer
from ...runtime import SubscriptionConsumerRegistration
from ...schema import Migration

GROUP = "chaos"
CATEGORY_COUNT = 8
CATEGORIES = [f"chaos-{n}" for n in range(CATEGORY_COUNT)]
BATCH_PAUSE_SECONDS = 0.05
COMMIT_DELAY_SECONDS = 0.05

TABLES = f"""
CREATE TABLE chaos_applied (
    event_id text NOT NULL,
    source text NOT NULL,
    stream text NOT NULL,
    position integer NOT NULL,
    node text NOT NULL,
    epoch bigint NOT NULL,
    transaction_id bigint NOT NULL,
    applied_at timestamptz NOT NULL
);
CREATE TABLE chaos_checkpoints (
    source text NOT NULL,
    before bigint,
    after bigint NOT NULL,
    moved_at timestamptz NOT NULL
);
CREATE TABLE chaos_allocations (
    client_addr inet,
    written_at timestamptz NOT NULL,
    held_leadership boolean NOT NULL
);
CREATE FUNCTION chaos_record_checkpoint() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO chaos_checkpoints VALUES (
        NEW.source,
        CASE WHEN TG_OP = 'UPDATE' THEN OLD.sequence_number END,
        NEW.sequence_number,
        clock_timestamp());
    RETURN NULL;
END $$;
CREATE TRIGGER chaos_checkpoints AFTER INSERT OR UPDATE ON consumer_checkpoints
    FOR EACH ROW EXECUTE FUNCTION chaos_record_checkpoint();
CREATE FUNCTION chaos_record_allocation() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO chaos_allocations VALUES (
        inet_client_addr(),
        clock_timestamp(),
        EXISTS (
            SELECT 1 FROM pg_locks l JOIN pg_stat_activity a USING (pid)
            WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
              AND (l.classid::bigint << 32 | l.objid::bigint) = {COORDINATOR_LOCK_KEY}
              AND a.client_addr IS NOT DISTINCT FROM inet_client_addr()));
    RETURN NULL;
END $$;
CREATE TRIGGER chaos_allocations AFTER INSERT OR UPDATE OR DELETE ON subscriptions
    FOR EACH STATEMENT EXECUTE FUNCTION chaos_record_allocation();
"""

_EPOCH = 'SELECT epoch FROM consumer_claims WHERE "group" = %s AND source = %s'
_RECORD = """
INSERT INTO chaos_applied (event_id, source, stream, position, node, epoch,
    transaction_id, applied_at)
VALUES (%s, %s, %s, %s, %s, %s, txid_current(), clock_timestamp())
"""


class RecordingProcessor(BatchProcessor):
    """Records each event it applies, with who applied it and under which epoch."""

    def __init__(self, node_id: str) -> None:
        self._node_id = node_id

    async def process_batch(
        self, events: Sequence[StoredEvent], transaction: Transaction
    ) -> None:
        connection = transaction.connection
        source = events[0].category
        cursor = await connection.execute(_EPOCH, (GROUP, source))
        row = await cursor.fetchone()
        epoch = int(row[0]) if row is not None else -1
        async with connection.cursor() as records:
            await records.executemany(
                _RECORD,
                [
                    (
                        event.id,
                        source,
                        event.stream,
                        event.position,
                        self._node_id,
                        epoch,
                    )
                    for event in events
                ],
            )
        await connection.execute("SELECT pg_sleep(%s)", [BATCH_PAUSE_SECONDS])


class CommitDelayingStore(PostgresCheckpointStore):
    """The PostgreSQL checkpoint store, idle a moment between the checkpoint
    statement and COMMIT."""

    async def advance(
        self,
        transaction: Transaction,
        claim: Claim,
        sequence_number: int,
        lease: timedelta,
        *,
        expected: int | Unchecked | None = Unchecked.ANY,
    ) -> None:
        await super().advance(
            transaction, claim, sequence_number, lease, expected=expected
        )
        await asyncio.sleep(COMMIT_DELAY_SECONDS)


MIGRATION = Migration("chaos-history", TABLES)


class ChaosApp(EventRuntimeContainer):
    """The run's application: one recording transactional consumer."""

    migrations = providers.List(providers.Object(MIGRATION))
    consumers = providers.List(
        providers.Factory(
            SubscriptionConsumerRegistration,
            consumer=providers.Factory(
                EventRuntimeContainer.transactional_consumer,
                checkpoint_store=providers.Singleton(
                    CommitDelayingStore, EventRuntimeContainer.connection_pool
                ),
                subscriber_group=GROUP,
                subscription_requests=[
                    CategoryIdentifier(category=category) for category in CATEGORIES
                ],
                processor=providers.Factory(
                    RecordingProcessor, node_id=EventRuntimeContainer.node_id
                ),
            ),
        )
    )
