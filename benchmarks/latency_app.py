"""The application the latency benchmark runs in its observer processes (``--app``).

One transactional consumer over the demo's 8 categories. Its processor writes
nothing: once a batch has committed (its checkpoint moved), it logs the numbers
(payload ``n``) of the batch's events and the wall-clock time, so the benchmark,
which noted the time just before publishing each, reads publish-to-committed
latencies from the node's log.
"""

import time
from collections.abc import Sequence

import structlog
from dependency_injector import providers
from logicblocks.event.types import StoredEvent

from eventcomposition.consumers import BatchProcessor, Transaction
from eventcomposition.containers import EventRuntimeContainer
from eventcomposition.demo import DemoNames
from eventcomposition.runtime import SubscriptionConsumerRegistration

APP = "benchmarks.latency_app:LatencyApp"
COMMITTED = "latency.committed"
NAMES = DemoNames(run_id="latency")

logger = structlog.get_logger("benchmarks.latency")


class CommitTimes(BatchProcessor):
    """Logs ``COMMITTED`` with the batch's event numbers once it has committed."""

    async def process_batch(
        self, events: Sequence[StoredEvent], transaction: Transaction
    ) -> None:
        numbers = [
            n
            for event in events
            if isinstance(event.payload, dict)
            and isinstance(n := event.payload.get("n"), int)
        ]

        def committed() -> None:
            logger.info(COMMITTED, numbers=numbers, at=time.time())

        transaction.on_commit(committed)


class LatencyApp(EventRuntimeContainer):
    consumers = providers.List(
        providers.Factory(
            SubscriptionConsumerRegistration,
            consumer=providers.Factory(
                EventRuntimeContainer.transactional_consumer,
                subscriber_group=NAMES.subscriber_group,
                subscription_requests=NAMES.partitions(),
                processor=providers.Factory(CommitTimes),
            ),
        )
    )
